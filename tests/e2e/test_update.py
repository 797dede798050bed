"""Updates end to end on the real daemon: release -> install -> trial -> commit, rollbacks, every
refusal of CONTRACT section 5, every kind of bad model, restarts during a trial."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgeagent.engine import testmodels
from edgeagent.errors import CommandError
from edgeagent.update.keys import generate_keypair, load_private_key
from edgeagent.update.manifest import sign_envelope
from edgeagent.update.release import make_release

pytestmark = pytest.mark.long(seconds=50)

REPO = Path(__file__).resolve().parents[2]
SHAPE = (1, 16)


@pytest.fixture
def keys(tmp_path):
    generate_keypair(tmp_path / "k1")
    generate_keypair(tmp_path / "k2")
    generate_keypair(tmp_path / "untrusted")
    return tmp_path


def model(tmp_path, name, **kw):
    kw.setdefault("input_shape", SHAPE)
    kw.setdefault("seed", 1)
    return testmodels.write_model(tmp_path / name, kind="dense", outputs=4, **kw)


def release(tmp_path, keys, target, version, base=None, key="k1", **kw):
    return make_release(keys=[str(keys / key / "edgeagent.key")], target=target, base=base, model="testmodel",
                        version=version, out_dir=tmp_path / f"rel-{version}-{target.stem}-{key}", **kw)


def cli(cfg, *args):
    return subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(cfg), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=180)


def update_args(rel: dict) -> dict:
    return {"manifest": json.loads(Path(rel["manifest"]).read_text()), "payload_url": Path(rel["payload"]).as_uri()}


def slots(d) -> dict:
    return {s["slot"]: s for s in d.call("slots")["slots"]}


def trusted(keys, *names):
    return {"trusted_keys": [str(keys / n / "edgeagent.pub") for n in names]}


def wait_until(fn, timeout=20.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("condition not met in time")


def test_release_install_rollback_live_and_offline(tmp_path, keys, start_daemon, model_path):
    v2 = model(tmp_path, "v2.tflite", version_tag=2)
    d = start_daemon(update={**trusted(keys, "k1"), "probation_s": 1.0, "min_inferences": 5})
    rel = tmp_path / "rel"
    r = subprocess.run([sys.executable, "-m", "edgeagent", "release", "--key", str(keys / "k1/edgeagent.key"),
                        "--target", str(v2), "--base", str(model_path), "--model", "testmodel", "--version", "2",
                        "--out", str(rel), "--json"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["kind"] == "delta" and out["payload_size"] < out["target_size"]
    r = cli(d.config_path, "install", out["manifest"], "--wait")
    assert r.returncode == 0, r.stderr
    st = d.call("status")
    assert st["model"]["version"] == 2 and st["model"]["slot"] == "b"
    s = slots(d)
    assert s["b"]["status"] == "good" and s["b"]["version"] == 2 and s["a"]["status"] == "good"
    assert s["b"]["health"]["ok"] is True
    # live rollback: v1 serves again at once
    r = cli(d.config_path, "rollback", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mode"] == "live"
    assert d.call("status")["model"]["version"] == 1
    assert d.stop() == 0
    # offline rollback: back to v2 under the lock, and the next start serves it
    r = cli(d.config_path, "rollback", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {**json.loads(r.stdout), "mode": "offline", "slot": "b", "version": 2}
    d2 = start_daemon(update=trusted(keys, "k1"), name="again")
    assert d2.call("status")["model"]["version"] == 2


def _tamper_sig(env: dict) -> dict:
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return env


def _resign(env: dict, keys, change) -> dict:
    signed = json.loads(json.dumps(env["signed"]))
    change(signed)
    return sign_envelope(signed, [load_private_key(keys / "k1/edgeagent.key")])


def test_every_refusal_leaves_slots_untouched_and_the_daemon_serving(tmp_path, keys, start_daemon, model_path):
    d = start_daemon(update={**trusted(keys, "k1", "k2"), "max_payload_bytes": 100_000},
                     model={"initial_version": 3})
    v4 = model(tmp_path, "v4.tflite", version_tag=4)
    other_base = model(tmp_path, "other.tflite", seed=9)
    good = release(tmp_path, keys, v4, 4, base=model_path, base_version=3)
    big = model(tmp_path, "big.tflite", slow=1, seed=2)
    env = json.loads(Path(good["manifest"]).read_text())
    url = Path(good["payload"]).as_uri()
    tampered = tmp_path / "tampered.bsdiff4"
    data = bytearray(Path(good["payload"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))

    cases = {
        "update.bad_signature": {"manifest": _tamper_sig(json.loads(json.dumps(env))), "payload_url": url},
        "update.unknown_key": update_args(release(tmp_path, keys, v4, 4, base=model_path, base_version=3, key="untrusted")),
        "update.expired": update_args(release(tmp_path, keys, v4, 5, base=model_path, base_version=3, expires_days=-1,
                                              created=datetime.now(timezone.utc) - timedelta(days=3))),
        "update.downgrade": update_args(release(tmp_path, keys, v4, 2, base=model_path, base_version=3)),
        "update.replay": update_args(release(tmp_path, keys, v4, 3, base=model_path, base_version=3)),
        "update.wrong_base": update_args(release(tmp_path, keys, v4, 6, base=other_base, base_version=3)),
        "update.payload_hash": {"manifest": env, "payload_url": tampered.as_uri()},
        "update.target_hash": {"manifest": _resign(env, keys, lambda s: s["target"].update(sha256="0" * 64)),
                               "payload_url": url},
        "update.too_large": update_args(release(tmp_path, keys, big, 7, force_full=True)),
        "update.wrong_model": {"manifest": _resign(env, keys, lambda s: s.update(model="othermodel")), "payload_url": url},
        "update.malformed": {"manifest": _resign(env, keys, lambda s: s.update(version="4")), "payload_url": url},
        "cmd.bad_args": {"manifest": env},
    }
    before = slots(d)
    state_before = json.loads((tmp_path / "state/state.json").read_text())["slots"]
    for code, args in cases.items():
        with pytest.raises(CommandError) as ei:
            d.call("update", args)
        assert ei.value.code == code, (code, ei.value)
        assert slots(d)["a"] == before["a"], code
        assert slots(d)["b"]["status"] in ("empty", "bad"), code
        st = d.call("status")
        assert st["model"]["version"] == 3 and st["model"]["slot"] == "a", code
    # nothing was ever switched to, and slot a never changed on disk
    assert json.loads((tmp_path / "state/state.json").read_text())["slots"]["a"] == state_before["a"]
    events = [e for e in d.call("status")["events"] if e["event"] == "update.rejected"]
    assert events and all(e.get("code") for e in events)
    # and the good bundle still goes through afterwards
    r = d.call("update", update_args(good))
    assert r["version"] == 4 and r["state"] == "trial"


def test_threshold_needs_distinct_trusted_keys(tmp_path, keys, start_daemon, model_path):
    d = start_daemon(update={**trusted(keys, "k1", "k2"), "threshold": 2})
    v2 = model(tmp_path, "v2.tflite", version_tag=2)
    one = release(tmp_path, keys, v2, 2, base=model_path)
    with pytest.raises(CommandError) as ei:
        d.call("update", update_args(one))
    assert ei.value.code == "update.threshold"
    both = make_release(keys=[str(keys / "k1/edgeagent.key"), str(keys / "k2/edgeagent.key")], target=v2,
                        base=model_path, model="testmodel", version=2, out_dir=tmp_path / "both")
    assert d.call("update", update_args(both))["version"] == 2


BAD_MODELS = {
    "nan": ({"nan": True}, "health.nonfinite"),
    "invoke_exception": ({"fail_at_invoke": True}, "health.invoke_failed"),
    "much_slower": ({"slow": 2}, "health.too_slow"),
    "other_input_shape": ({"input_shape": (1, 32)}, "health.io_mismatch"),
    "kills_its_process": ({"huge": True}, "health."),
}


def test_bad_models_are_caught_before_the_switch(tmp_path, keys, start_daemon, model_path):
    d = start_daemon(update=trusted(keys, "k1"))
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"TFL3" * 64)  # starts like a model, is not one
    cases = {name: (model(tmp_path, f"{name}.tflite", **kw), code) for name, (kw, code) in BAD_MODELS.items()}
    cases["not_a_model"] = (junk, "health.load_failed")
    for name, (path, code) in cases.items():
        rel = release(tmp_path, keys, path, 2, force_full=True)
        with pytest.raises(CommandError) as ei:
            d.call("update", update_args(rel), timeout=120)
        assert ei.value.code == "update.health_failed", name
        assert code in ei.value.message, (name, ei.value.message)
        st = d.call("status")
        assert st["model"]["version"] == 1 and st["model"]["slot"] == "a", name
        b = slots(d)["b"]
        assert b["status"] == "bad" and code in b["reason"], (name, b)
        assert d.call("ping")["pong"]


def test_a_model_that_goes_bad_in_service_is_rolled_back_by_probation(tmp_path, keys, start_daemon, model_path):
    d = start_daemon(update={**trusted(keys, "k1"), "probation_s": 30.0, "min_inferences": 1000})
    v2 = model(tmp_path, "v2.tflite", version_tag=2, nan_after=40)
    r = d.call("update", update_args(release(tmp_path, keys, v2, 2, base=model_path)))
    assert r["state"] == "trial"
    wait_until(lambda: d.call("status")["model"]["version"] == 1, timeout=20)
    b = slots(d)["b"]
    assert b["status"] == "bad" and "non-finite" in b["reason"]
    names = [e["event"] for e in d.call("status")["events"]]
    assert "update.trial" in names and "update.rolled_back" in names
    # the anti-rollback high water moved to 2: the same bundle cannot be replayed
    with pytest.raises(CommandError) as ei:
        d.call("update", update_args(release(tmp_path, keys, v2, 2, base=model_path)))
    assert ei.value.code == "update.replay"


def test_commit_command_ends_probation_early(tmp_path, keys, start_daemon, model_path):
    d = start_daemon(update={**trusted(keys, "k1"), "probation_s": 600.0})
    v2 = model(tmp_path, "v2.tflite", version_tag=2)
    d.call("update", update_args(release(tmp_path, keys, v2, 2, base=model_path)))
    assert slots(d)["b"]["status"] == "trial"
    assert d.call("commit")["status"] == "good"
    assert slots(d)["b"]["status"] == "good"
    with pytest.raises(CommandError) as ei:
        d.call("commit")
    assert ei.value.code == "state.no_trial"


def test_restarts_during_a_trial_count_attempts_then_roll_back(tmp_path, keys, start_daemon, model_path):
    cfg = {"update": {**trusted(keys, "k1"), "probation_s": 600.0, "max_trial_attempts": 2}}
    d = start_daemon(**cfg)
    v2 = model(tmp_path, "v2.tflite", version_tag=2)
    d.call("update", update_args(release(tmp_path, keys, v2, 2, base=model_path)))
    for attempt in (1, 2):
        d.kill()  # an unexpected restart (crash, power cut)
        d = start_daemon(name=f"restart{attempt}", **cfg)
        st = d.call("status")
        assert st["model"]["version"] == 2 and st["trial"]["attempts"] == attempt
    d.kill()
    d = start_daemon(name="restart3", **cfg)
    st = d.call("status")
    assert st["model"]["version"] == 1 and st["trial"] is None
    b = slots(d)["b"]
    assert b["status"] == "bad" and "trial.restart_limit" in b["reason"]


def test_offline_install_leaves_a_trial_for_the_next_start(tmp_path, keys, start_daemon, model_path):
    d = start_daemon(update={**trusted(keys, "k1"), "probation_s": 1.0, "min_inferences": 5})
    d.stop()
    v2 = model(tmp_path, "v2.tflite", version_tag=2)
    rel = release(tmp_path, keys, v2, 2, base=model_path)
    r = cli(d.config_path, "install", rel["manifest"], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mode"] == "offline"
    d2 = start_daemon(update={**trusted(keys, "k1"), "probation_s": 1.0, "min_inferences": 5}, name="next")
    assert d2.call("status")["model"]["version"] == 2
    wait_until(lambda: slots(d2)["b"]["status"] == "good", timeout=15)
