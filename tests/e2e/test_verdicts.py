"""Update verdicts a fleet can trust, on the real daemon: a model that hangs after N invokes never
stays served (probation shorter or longer than the watchdog, under a supervisor that restarts the
daemon as systemd does), a committed model that keeps crashing goes back to the previous slot,
golden sets and shadow agreement check accuracy, events carry what the update cost, slot files
are read-only, and the health child dies with the daemon."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from edgeagent.engine import testmodels
from edgeagent.errors import CommandError
from edgeagent.update.keys import generate_keypair
from edgeagent.update.release import golden_health, make_release
from tests.support.daemon import Supervisor, base_config

pytestmark = pytest.mark.long(seconds=60)

REPO = Path(__file__).resolve().parents[2]
SHAPE = (1, 16)


@pytest.fixture
def keys(tmp_path):
    generate_keypair(tmp_path / "k1")
    return tmp_path


def model(tmp_path, name, **kw):
    kw.setdefault("input_shape", SHAPE)
    kw.setdefault("seed", 1)
    return testmodels.write_model(tmp_path / name, kind="dense", outputs=4, **kw)


def release(tmp_path, keys, target, version, base=None, **kw):
    return make_release(keys=[str(keys / "k1/edgeagent.key")], target=target, base=base, model="testmodel",
                        version=version, out_dir=tmp_path / f"rel-{version}-{target.stem}", **kw)


def update_args(rel: dict) -> dict:
    return {"manifest": json.loads(Path(rel["manifest"]).read_text()), "payload_url": Path(rel["payload"]).as_uri()}


def trusted(keys) -> list[str]:
    return [str(keys / "k1/edgeagent.pub")]


def state(tmp_path) -> dict:
    return json.loads((tmp_path / "state/state.json").read_text())


def wait_until(fn, timeout=30.0, step=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as e:  # noqa: BLE001 - the daemon may be restarting
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(step)
    raise AssertionError(f"condition not met in time (last: {last!r})")


def serving_version(sup: Supervisor):
    d = sup.daemon
    if d is None or d.proc.poll() is not None or not any("READY=1" in m for m in d.messages):
        return None
    return d.call("status", timeout=5)["model"]["version"]


def events_of(d, name):
    return [e for e in d.call("status")["events"] if e["event"] == name]


@pytest.fixture
def supervised(tmp_path, model_path):
    sups: list[Supervisor] = []

    def make(watchdog_s=4.0, **over):
        sup = Supervisor(tmp_path, base_config(tmp_path, model_path, **over), watchdog_s=watchdog_s)
        sups.append(sup)
        return sup.start()

    yield make
    for s in sups:
        s.stop()


def test_hang_after_commit_probation_shorter_than_watchdog_rolls_back_after_crash_limit(
        tmp_path, keys, supervised, model_path):
    # probation (0.3 s) ends before the model starts hanging (its 40th invoke, ~0.8 s at 50 Hz)
    sup = supervised(input={"rate_hz": 50.0}, update={"trusted_keys": trusted(keys), "probation_s": 0.3,
                                                      "min_inferences": 5, "max_crash_restarts": 2})
    d = sup.wait_ready(1)
    hang = model(tmp_path, "hang.tflite", version_tag=2, hang_after=40)
    r = d.call("update", update_args(release(tmp_path, keys, hang, 2, base=model_path)))
    assert r["state"] == "trial"
    # it passes probation (it has not hung yet) ...
    wait_until(lambda: "update.committed" in d.log() or events_of(d, "update.committed"), timeout=10)
    # ... then hangs, the daemon restarts, serves it again, hangs again: after 2 unclean restarts
    # the next start goes back to the model that served before
    wait_until(lambda: serving_version(sup) == 1 and len(sup.starts) >= 3, timeout=90, step=0.3)
    st = state(tmp_path)
    assert st["active"] == "a" and st["trial"] is None
    assert st["slots"]["b"]["status"] == "bad" and st["slots"]["b"]["reason"].startswith("crash_loop")
    ended = [s for s in sup.starts[:-1]]
    assert all(s["exit"] != 0 for s in ended), ended
    # and it stays there: the previous model serves, commands are answered
    time.sleep(3)
    assert serving_version(sup) == 1 and sup.call("ping")["pong"]
    assert len(sup.starts) == len(ended) + 1


def test_hang_during_probation_longer_than_watchdog_rolls_back_at_once(tmp_path, keys, supervised, model_path):
    sup = supervised(input={"rate_hz": 50.0}, update={"trusted_keys": trusted(keys), "probation_s": 30.0,
                                                      "min_inferences": 5})
    d = sup.wait_ready(1)
    hang = model(tmp_path, "hang.tflite", version_tag=2, hang_after=40)
    d.call("update", update_args(release(tmp_path, keys, hang, 2, base=model_path)))
    # the stall is seen during probation: the rollback is persisted, then the daemon restarts
    # (the stuck interpreter cannot be left) and the next start serves slot a
    wait_until(lambda: serving_version(sup) == 1 and len(sup.starts) >= 2, timeout=60, step=0.3)
    assert sup.starts[0]["exit"] == 3, sup.starts  # EXIT_RESTART, before systemd's watchdog fired
    st = state(tmp_path)
    assert st["active"] == "a" and st["trial"] is None
    assert st["slots"]["b"]["status"] == "bad" and "probation.stalled" in st["slots"]["b"]["reason"]
    time.sleep(2)
    assert len(sup.starts) == 2 and serving_version(sup) == 1


def test_rollback_command_while_the_loop_is_hung(tmp_path, keys, supervised, model_path):
    sup = supervised(input={"rate_hz": 50.0}, update={"trusted_keys": trusted(keys), "probation_s": 30.0})
    d = sup.wait_ready(1)
    hang = model(tmp_path, "hang.tflite", version_tag=2, hang_after=40)
    d.call("update", update_args(release(tmp_path, keys, hang, 2, base=model_path)))

    def hung():  # the trial's inference count stopped moving
        a = d.call("status")["trial"]["inferences"]
        time.sleep(0.15)
        b = d.call("status")["trial"]["inferences"]
        return a == b and a > 30

    wait_until(hung, timeout=10, step=0.01)
    t = d.call("status")["trial"]
    assert t["checked"] == t["inferences"]  # a trial checks every frame for NaN/Inf, not one in 8
    r = d.call("rollback")  # persisted first; the loop cannot take the swap, so the daemon restarts
    assert r["slot"] == "a" and r["version"] == 1 and r["restarting"] is True
    assert state(tmp_path)["active"] == "a"
    wait_until(lambda: serving_version(sup) == 1 and len(sup.starts) >= 2, timeout=60, step=0.3)
    assert sup.starts[0]["exit"] == 3
    assert state(tmp_path)["slots"]["b"]["status"] == "bad"


def test_a_committed_model_that_keeps_crashing_goes_back_to_the_previous_slot(tmp_path, keys, supervised,
                                                                                model_path):
    sup = supervised(update={"trusted_keys": trusted(keys), "probation_s": 0.5, "min_inferences": 5,
                             "max_crash_restarts": 2})
    d = sup.wait_ready(1)
    v2 = model(tmp_path, "v2.tflite", version_tag=2)
    d.call("update", update_args(release(tmp_path, keys, v2, 2, base=model_path)))
    wait_until(lambda: state(tmp_path)["slots"]["b"]["status"] == "good", timeout=15)
    # clean stops and starts are not crashes
    for n in (2, 3):
        sup.restart()
        d = sup.wait_ready(n)
        assert d.call("status")["model"]["version"] == 2
    # the model now crashes the process (as a delegate's segfault would) right after each start
    for n in (3, 4):
        d = sup.wait_ready(n)
        assert d.call("status")["model"]["version"] == 2
        os.kill(d.proc.pid, signal.SIGSEGV)
    d = sup.wait_ready(5)
    assert d.call("status")["model"]["version"] == 1
    st = state(tmp_path)
    assert st["active"] == "a" and st["slots"]["b"]["reason"].startswith("crash_loop: 2")
    assert [s["exit"] for s in sup.starts[:5]] == [0, 0, -signal.SIGSEGV, -signal.SIGSEGV, None]


def _golden_npz(path: Path, reference: Path, n: int = 64, mode: str = "labels") -> Path:
    from edgeagent.engine.model import Model

    ref = Model.load(str(reference))
    rng = np.random.default_rng(7)
    inputs = rng.standard_normal((n, 16)).astype(np.float32)
    outs = []
    for x in inputs:
        ref.preprocess(x)
        ref.invoke()
        outs.append(ref.outputs_view()[0][0].copy())
    outs = np.array(outs)
    buf = io.BytesIO()
    if mode == "labels":
        np.savez(buf, inputs=inputs, labels=outs.argmax(axis=1).astype(np.int64))
    else:
        np.savez(buf, inputs=inputs, outputs=outs)
    path.write_bytes(buf.getvalue())
    return path


def test_golden_set_passes_a_fine_tune_and_refuses_other_weights(tmp_path, keys, start_daemon, model_path):
    d = start_daemon(update={"trusted_keys": trusted(keys), "probation_s": 0.5, "min_inferences": 5})
    golden = _golden_npz(tmp_path / "golden.npz", model_path)
    other = model(tmp_path, "other.tflite", seed=9)
    with pytest.raises(CommandError) as ei:
        d.call("update", update_args(release(tmp_path, keys, other, 2, force_full=True,
                                             health={"golden": golden_health(golden, 90)})), timeout=120)
    assert ei.value.code == "update.health_failed"
    assert ei.value.message.startswith("health.golden_failed")
    assert "golden examples pass" in ei.value.message and "min 90%" in ei.value.message
    assert d.call("status")["model"]["version"] == 1
    # a true fine-tune of the same model, released with the CLI's --golden
    tuned = tmp_path / "tuned.tflite"
    tuned.write_bytes(testmodels.finetune(model_path.read_bytes(), last_n_buffers=1, scale=0.01, seed=3))
    out = tmp_path / "rel-tuned"
    r = subprocess.run([sys.executable, "-m", "edgeagent", "release", "--key", str(keys / "k1/edgeagent.key"),
                        "--target", str(tuned), "--base", str(model_path), "--model", "testmodel", "--version", "3",
                        "--out", str(out), "--golden", str(golden), "--min-pass-pct", "90", "--json"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    rel = json.loads(r.stdout)
    res = d.call("update", update_args(rel), timeout=120)
    assert res["state"] == "trial"
    g = res["health"]["golden"]
    assert g["examples"] == 64 and g["pass_pct"] >= 90 and g["mode"] == "labels"
    wait_until(lambda: state(tmp_path)["slots"]["b"]["status"] == "good", timeout=15)


def test_shadow_disagreement_rolls_back_and_events_carry_before_and_after(tmp_path, keys, start_daemon,
                                                                           model_path):
    d = start_daemon(update={"trusted_keys": trusted(keys), "probation_s": 30.0, "min_inferences": 5})
    other = model(tmp_path, "other.tflite", seed=9)  # same shapes, finite outputs, other answers
    rel = release(tmp_path, keys, other, 2, force_full=True, health={"min_agreement_pct": 90})
    assert d.call("update", update_args(rel))["state"] == "trial"
    wait_until(lambda: d.call("status")["model"]["version"] == 1, timeout=20)
    b = state(tmp_path)["slots"]["b"]
    assert b["status"] == "bad" and b["reason"].startswith("probation.disagreement")
    (ev,) = events_of(d, "update.rolled_back")
    assert ev["reason"].startswith("probation.disagreement") and ev["automatic"] is True
    for side in ("before", "after"):
        assert ev[side]["invoke_p50_ms"] > 0 and ev[side]["rss_mb"] > 10, ev
    # a fine-tune agrees with its predecessor and is committed, with the figures of what it cost
    tuned = tmp_path / "tuned.tflite"
    tuned.write_bytes(testmodels.finetune(model_path.read_bytes(), last_n_buffers=1, scale=0.01, seed=3))
    rel = release(tmp_path, keys, tuned, 3, base=model_path,
                  health={"min_agreement_pct": 90, "probation_s": 1})
    d.call("update", update_args(rel))
    wait_until(lambda: events_of(d, "update.committed"), timeout=20)
    (ev,) = events_of(d, "update.committed")
    assert ev["version"] == 3 and ev["before"]["invoke_p50_ms"] > 0 and ev["after"]["invoke_p50_ms"] > 0
    assert ev["after"]["rss_mb"] > 10 and "paired frames" in ev["reason"]


def test_slot_files_are_read_only(tmp_path, keys, start_daemon, model_path):
    d = start_daemon(update={"trusted_keys": trusted(keys), "probation_s": 0.5, "min_inferences": 5})
    a = tmp_path / "state/slots/a/model.tflite"
    assert stat.S_IMODE(a.stat().st_mode) == 0o444
    v2 = model(tmp_path, "v2.tflite", version_tag=2)
    d.call("update", update_args(release(tmp_path, keys, v2, 2, base=model_path)))
    b = tmp_path / "state/slots/b/model.tflite"
    assert stat.S_IMODE(b.stat().st_mode) == 0o444
    d.stop()
    # a slot left writable (by an older version, by hand) is made read-only when it is verified
    os.chmod(b, 0o644)
    d2 = start_daemon(update={"trusted_keys": trusted(keys)}, name="again")
    assert d2.call("status")["model"]["slot"] == "b"
    assert stat.S_IMODE(b.stat().st_mode) == 0o444


def test_the_health_child_dies_with_the_daemon(tmp_path, keys, start_daemon):
    d = start_daemon(update={"trusted_keys": trusted(keys), "health_timeout_s": 120})
    hang = model(tmp_path, "hang.tflite", version_tag=2, hang=True)  # the check never finishes
    rel = release(tmp_path, keys, hang, 2, force_full=True)
    from edgeagent.control.client import ControlClient

    c = ControlClient(d.socket_path, timeout=5)
    c.__enter__()
    try:
        c.send("update", update_args(rel))
        daemon = psutil.Process(d.proc.pid)
        children = wait_until(lambda: [p for p in daemon.children() if "edgeagent.update.health" in " ".join(p.cmdline())],
                              timeout=20)
        child = children[0]
        # a guest on a serving device (it lowers its priority after arming PR_SET_PDEATHSIG)
        wait_until(lambda: child.nice() >= 10, timeout=20)
        d.kill()
        gone, alive = psutil.wait_procs([child], timeout=10)
        assert not alive, "the health child outlived a SIGKILLed daemon"
    finally:
        c.close()
