"""Building the new model: the base is hashed before patching, the result is verified after,
nothing half-written is ever left at the slot path, and the streamed patcher produces exactly
what bsdiff4.patch produces, on a real fine-tuned .tflite too."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import bsdiff4
import numpy as np
import pytest

from edgeagent.engine import testmodels
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.patch import apply_delta, copy_full


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def pair(tmp_path):
    """(dir, old bytes, new bytes) with old, patch on disk and a slot directory."""
    rng = np.random.default_rng(3)
    old = rng.standard_normal(100_000).astype(np.float32).tobytes()
    new = bytearray(old)
    new[300_000:320_000] = rng.standard_normal(5_000).astype(np.float32).tobytes()
    new = bytes(new) + b"appended tail"
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(bsdiff4.diff(old, new))
    (tmp_path / "slot").mkdir()
    return tmp_path, old, new


def apply(d, old, new, patch="patch", base="old", **kw):
    kw.setdefault("target_sha256", sha(new))
    kw.setdefault("target_size", len(new))
    apply_delta(d / base, sha(old), d / patch, d / "slot/model.tflite", **kw)


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in (d / "slot").iterdir())


def test_apply_builds_the_target_with_progress(pair):
    d, old, new = pair
    progress = []
    apply(d, old, new, progress=progress.append)
    assert (d / "slot/model.tflite").read_bytes() == new
    assert leftovers(d) == ["model.tflite"]
    phases = [p["phase"] for p in progress]
    assert phases.index("write") > 0 and set(phases[:phases.index("write")]) == {"base_hash"}
    for ph in ("base_hash", "write"):
        pcts = [p["percent"] for p in progress if p["phase"] == ph]
        assert pcts == sorted(pcts) and pcts[-1] == 100.0
    assert progress[-1] == {"phase": "write", "bytes": len(new), "total": len(new), "percent": 100.0}


def test_a_base_one_byte_off_is_refused_before_the_patch_is_read(pair):
    d, old, new = pair
    off = bytearray(old)
    off[len(off) // 2] ^= 1
    (d / "old").write_bytes(bytes(off))
    with pytest.raises(UpdateRejected) as ei:
        apply(d, old, new, patch="no-such-patch")  # never opened: the base is checked first
    assert ei.value.code == "update.wrong_base"
    assert leftovers(d) == []


@pytest.mark.parametrize("damage", ["flip-header", "flip-body", "truncate", "garbage", "empty"])
def test_a_tampered_patch_never_lands(pair, damage):
    d, old, new = pair
    p = bytearray((d / "patch").read_bytes())
    if damage == "flip-header":
        p[20] ^= 0x40  # the diff block length
    elif damage == "flip-body":
        p[len(p) // 2] ^= 0xFF
    elif damage == "truncate":
        del p[len(p) - 40:]
    elif damage == "garbage":
        p = bytearray(b"BSDIFF40" + os.urandom(300))
    else:
        p = bytearray()
    (d / "bad").write_bytes(bytes(p))
    (d / "slot/model.tflite").write_bytes(b"previous content")
    with pytest.raises(UpdateRejected) as ei:
        apply(d, old, new, patch="bad")
    assert ei.value.code in ("update.bad_patch", "update.target_hash")
    assert leftovers(d) == ["model.tflite"]  # no temp file left behind
    assert (d / "slot/model.tflite").read_bytes() == b"previous content"  # not clobbered


def test_a_result_other_than_the_manifest_target_is_refused(pair):
    d, old, new = pair
    with pytest.raises(UpdateRejected) as ei:
        apply(d, old, new, target_sha256="0" * 64)
    assert ei.value.code == "update.target_hash" and leftovers(d) == []
    with pytest.raises(UpdateRejected) as ei:  # the patch header announces another size
        apply(d, old, new, target_size=len(new) + 1)
    assert ei.value.code == "update.bad_patch" and leftovers(d) == []


def test_disk_full_while_writing_is_no_space(pair):
    d, old, new = pair
    (d / f"slot/.model.tflite.tmp-{os.getpid()}").symlink_to("/dev/full")  # the temp name: writes get ENOSPC
    with pytest.raises(UpdateRejected) as ei:
        apply(d, old, new)
    assert ei.value.code == "update.no_space" and leftovers(d) == []


def test_streamed_patch_equals_bsdiff4_on_a_fine_tuned_tflite(tmp_path):
    v1 = testmodels.build_model(kind="conv", input_shape=(1, 32, 32, 3), outputs=10, seed=5, filters=16)
    for n in (1, 2, 0):
        v2 = testmodels.finetune(v1, last_n_buffers=n, seed=n + 7)
        patch = bsdiff4.diff(v1, v2)
        (tmp_path / "v1").write_bytes(v1)
        (tmp_path / "p").write_bytes(patch)
        out = tmp_path / f"v2-{n}"
        apply_delta(tmp_path / "v1", sha(v1), tmp_path / "p", out, target_sha256=sha(v2), target_size=len(v2))
        assert out.read_bytes() == bsdiff4.patch(v1, patch) == v2


def test_streamed_patch_across_chunk_boundaries(tmp_path):
    """Long copy and extra runs (over the 1 MiB piece size) with inserts and deletes."""
    rng = np.random.default_rng(11)
    old = rng.integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    new = old[:1_200_000] + rng.integers(0, 256, 1_500_000, dtype=np.uint8).tobytes() + old[1_300_000:2_900_000]
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "p").write_bytes(bsdiff4.diff(old, new))
    apply_delta(tmp_path / "old", sha(old), tmp_path / "p", tmp_path / "out", target_sha256=sha(new),
                target_size=len(new))
    assert (tmp_path / "out").read_bytes() == new


def test_copy_full(tmp_path):
    data = os.urandom(3_000_000)
    (tmp_path / "payload").write_bytes(data)
    (tmp_path / "slot").mkdir()
    progress = []
    copy_full(tmp_path / "payload", tmp_path / "slot/model.tflite", target_sha256=sha(data), target_size=len(data),
              progress=progress.append)
    assert (tmp_path / "slot/model.tflite").read_bytes() == data and progress[-1]["percent"] == 100.0
    for kw in ({"target_sha256": "1" * 64, "target_size": len(data)},
               {"target_sha256": sha(data), "target_size": len(data) - 1}):
        with pytest.raises(UpdateRejected) as ei:
            copy_full(tmp_path / "payload", tmp_path / "slot/other.tflite", **kw)
        assert ei.value.code == "update.target_hash"
    assert leftovers(tmp_path) == ["model.tflite"]
