"""The publisher's fast in-place delta: a standard BSDIFF4 patch that bsdiff4.patch and the
device's streaming patcher both turn into exactly the target."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import bsdiff4
import pytest

from edgeagent.update import delta as delta_mod
from edgeagent.update.delta import build_delta, inplace_delta
from edgeagent.update.patch import apply_delta

pytestmark = pytest.mark.long(seconds=25)

REPO = Path(__file__).resolve().parents[2]


def _fine_tune(old: bytes, rnd: random.Random, *, edits: int, span: int) -> bytes:
    new = bytearray(old)
    for _ in range(edits):
        pos = rnd.randrange(0, max(len(new) - span, 1))
        new[pos:pos + span] = rnd.randbytes(min(span, len(new) - pos))
    return bytes(new)


def _apply_both(tmp: Path, old: bytes, patch: bytes, new: bytes) -> None:
    assert bsdiff4.patch(old, patch) == new  # the reference implementation
    out = tmp / "slot.tflite"
    if out.exists():
        out.chmod(0o644)
        out.unlink()
    apply_delta(tmp / "old", hashlib.sha256(old).hexdigest(), tmp / "patch", out,
                target_sha256=hashlib.sha256(new).hexdigest(), target_size=len(new))
    assert out.read_bytes() == new  # the device's streaming patcher


@pytest.mark.parametrize("size,edits,span", [(0, 0, 1), (1, 1, 1), (5000, 3, 17), (300_000, 40, 900),
                                             (9_000_000, 25, 4000), (4 << 20, 0, 1)])
def test_inplace_patches_are_applied_byte_for_byte(tmp_path, size, edits, span):
    rnd = random.Random(size + edits)
    old = rnd.randbytes(size)
    new = _fine_tune(old, rnd, edits=edits, span=span)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    d = inplace_delta(tmp_path / "old", tmp_path / "new", tmp_path / "patch")
    assert d.method == "inplace" and d.size == (tmp_path / "patch").stat().st_size
    _apply_both(tmp_path, old, (tmp_path / "patch").read_bytes(), new)
    changed = sum(a != b for a, b in zip(old, new)) if size < 1_000_000 else None
    if changed is not None:
        assert d.changed_fraction == pytest.approx(changed / size if size else 0.0)


def test_inplace_is_as_small_as_bsdiff4_on_a_fine_tuned_model(tmp_path):
    """A real .tflite whose last layer's float weights moved a little, the case the fast path is
    for: the patch is no bigger than bsdiff4's (within 1%)."""
    from edgeagent.engine import testmodels

    old = testmodels.build_model(kind="dense", input_shape=(1, 1024), seed=1)
    new = testmodels.finetune(old, last_n_buffers=1, seed=2)
    assert len(new) == len(old) and new != old
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    d = inplace_delta(tmp_path / "old", tmp_path / "new", tmp_path / "patch")
    ref = bsdiff4.diff(old, new)
    assert d.size <= len(ref) * 1.01 + 64
    _apply_both(tmp_path, old, (tmp_path / "patch").read_bytes(), new)


def test_auto_keeps_the_smaller_and_falls_back_when_the_layout_moved(tmp_path, monkeypatch):
    rnd = random.Random(7)
    old = rnd.randbytes(200_000)
    (tmp_path / "old").write_bytes(old)
    # same size, content shifted by one byte: in place nearly every byte differs, bsdiff4 finds it
    shifted = old[1:] + b"\0"
    (tmp_path / "shifted").write_bytes(shifted)
    d = build_delta(tmp_path / "old", tmp_path / "shifted", tmp_path / "d1")
    assert d.method == "bsdiff4" and d.path == tmp_path / "d1" and d.size < 10_000
    (tmp_path / "d1").rename(tmp_path / "patch")
    _apply_both(tmp_path, old, (tmp_path / "patch").read_bytes(), shifted)
    # an in-place edit: the fast patch is kept (smaller or equal)
    edited = _fine_tune(old, rnd, edits=5, span=100)
    (tmp_path / "edited").write_bytes(edited)
    d = build_delta(tmp_path / "old", tmp_path / "edited", tmp_path / "d2")
    assert d.method == "inplace"
    # a different size can only be bsdiff4
    grown = old + b"tail"
    (tmp_path / "grown").write_bytes(grown)
    assert build_delta(tmp_path / "old", tmp_path / "grown", tmp_path / "d3").method == "bsdiff4"
    # above the cheap size only the fast pass runs when the layout held, bsdiff4 when it did not
    monkeypatch.setattr(delta_mod, "CHEAP_BYTES", 1000)
    calls = []
    real = delta_mod.bsdiff_delta
    monkeypatch.setattr(delta_mod, "bsdiff_delta", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert build_delta(tmp_path / "old", tmp_path / "edited", tmp_path / "d4").method == "inplace" and not calls
    assert build_delta(tmp_path / "old", tmp_path / "shifted", tmp_path / "d5").method == "bsdiff4" and calls
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("d")) == ["d2", "d3", "d4", "d5"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeagent", *args], capture_output=True, text=True, cwd=REPO)


def test_release_says_how_the_delta_was_built_and_refuses_an_impossible_method(tmp_path):
    assert cli("keygen", "--out", str(tmp_path / "k")).returncode == 0
    rnd = random.Random(3)
    old = rnd.randbytes(100_000)
    (tmp_path / "v1").write_bytes(old)
    (tmp_path / "v2").write_bytes(_fine_tune(old, rnd, edits=4, span=200))
    (tmp_path / "v3").write_bytes(old + b"more")
    base = ["release", "--key", str(tmp_path / "k/edgeagent.key"), "--base", str(tmp_path / "v1"), "--model", "m",
            "--out", str(tmp_path / "out")]
    r = cli(*base, "--target", str(tmp_path / "v2"), "--version", "2", "--delta", "inplace", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["kind"] == "delta" and out["delta_method"] == "inplace"
    ok = cli("verify", out["manifest"], "--payload", out["payload"], "--base", str(tmp_path / "v1"),
             "--pubkey", str(tmp_path / "k/edgeagent.pub"))
    assert ok.returncode == 0 and "target" in ok.stdout
    r = cli(*base, "--target", str(tmp_path / "v3"), "--version", "3", "--delta", "inplace")
    assert r.returncode == 1 and r.stderr.strip() == \
        "edgeagent: release.bad_args: --delta inplace needs a base and a target of the same size"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_json_errors_go_to_stdout_too(tmp_path):
    """A script that reads `--json` output gets {"ok": false, "error": ...} on stdout, not nothing."""
    assert cli("keygen", "--out", str(tmp_path / "k")).returncode == 0
    assert cli("keygen", "--out", str(tmp_path / "other")).returncode == 0
    (tmp_path / "v1").write_bytes(b"x" * 1000)
    r = cli("release", "--key", str(tmp_path / "k/edgeagent.key"), "--target", str(tmp_path / "v1"), "--model", "m",
            "--version", "1", "--out", str(tmp_path / "out"), "--json")
    manifest = json.loads(r.stdout)["manifest"]
    bad = cli("verify", manifest, "--pubkey", str(tmp_path / "other/edgeagent.pub"), "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout) == {"ok": False, "error": {"code": "update.unknown_key",
                                                             "message": "no signature is from a trusted key"}}
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\nstate_dir = "{tmp_path}/state"\n[control]\nsocket = "{tmp_path}/ctl.sock"\n')
    for op in ("commit", "rollback"):  # nothing installed yet: both refuse, on stdout too
        r = cli("-c", str(cfg), op, "--json")
        assert r.returncode == 1, (op, r)
        out = json.loads(r.stdout)
        assert out["ok"] is False and out["error"]["code"] == "state.no_model", (op, out)
        assert r.stderr.startswith("edgeagent: state.no_model: ")
    assert json.loads(cli("-c", str(cfg), "slots", "--json").stdout)["slots"][0]["status"] == "empty"


@pytest.mark.parametrize("finetune", [0.0, 1e-3])
def test_a_shifted_layout_gets_a_tensor_aligned_delta_both_patchers_apply(tmp_path, finetune, monkeypatch):
    """Issue 23: a re-export with one more layer moves every later buffer; the delta matches the
    tensors by name and shape instead of suffix-sorting the base (bsdiff4.diff)."""
    from edgeagent.engine import testmodels

    v1 = testmodels.write_model(tmp_path / "old", kind="dense", input_shape=(1, 16), outputs=4, seed=1, slow=1)
    v2 = testmodels.write_model(tmp_path / "new", kind="dense", input_shape=(1, 16), outputs=4, seed=1, slow=1,
                                insert_layer=2, finetune=finetune)
    old, new = v1.read_bytes(), v2.read_bytes()
    assert len(new) > len(old) > delta_mod.CHEAP_BYTES
    d = build_delta(v1, v2, tmp_path / "d")
    assert d.method == "tensor" and "tensors matched" in d.why and "the sizes differ" in d.why, d
    (tmp_path / "d").rename(tmp_path / "patch")
    _apply_both(tmp_path, old, (tmp_path / "patch").read_bytes(), new)
    if finetune:
        return
    assert d.size < 0.3 * len(new), d.size  # the patch is about the inserted layer (4 MiB of new weights)
    # a model whose tensors have nothing in common with the base: bsdiff4 (once: it does not depend
    # on the fine-tune). A small base counted as big: suffix-sorting the 16 MiB one took 6 s of CPU
    monkeypatch.setattr(delta_mod, "CHEAP_BYTES", 100)
    small = testmodels.write_model(tmp_path / "small", kind="dense", input_shape=(1, 16), outputs=4, seed=1)
    other = testmodels.write_model(tmp_path / "other", kind="conv", input_shape=(1, 64, 64, 3), outputs=8, seed=9)
    assert other.stat().st_size > delta_mod.CHEAP_BYTES
    d2 = build_delta(small, other, tmp_path / "d2")
    assert d2.method == "bsdiff4" and "tensors that match the base" in d2.why, d2


def test_release_delta_tensor_is_forced_and_says_why(tmp_path):
    from edgeagent.engine import testmodels

    assert cli("keygen", "--out", str(tmp_path / "k")).returncode == 0
    testmodels.write_model(tmp_path / "v1", kind="dense", input_shape=(1, 16), outputs=4, seed=1, slow=1)
    testmodels.write_model(tmp_path / "v2", kind="dense", input_shape=(1, 16), outputs=4, seed=1, slow=1,
                           insert_layer=0)
    r = cli("release", "--key", str(tmp_path / "k/edgeagent.key"), "--base", str(tmp_path / "v1"), "--model", "m",
            "--out", str(tmp_path / "out"), "--target", str(tmp_path / "v2"), "--version", "2", "--delta", "tensor")
    assert r.returncode == 0, r.stderr
    assert "delta (tensor: " in r.stdout and "tensors matched" in r.stdout, r.stdout
