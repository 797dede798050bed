"""Accelerators through the whole update path (issue 21), with a real external delegate library
built from C at test time (tests/support/delegate): it records its options and the process that
loaded it, can claim FULLY_CONNECTED nodes and run them, fail to load, or refuse a second open
from another process as a Coral USB stick does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from edgeagent.engine import testmodels
from edgeagent.update.keys import generate_keypair
from tests.e2e.test_update import REPO, cli, model, release, slots, trusted, wait_until
from tests.support.daemon import Daemon, base_config
from tests.support.delegate import records


def delegate_cfg(lib, rec, **extra_options):
    return {"library": str(lib), "options": {"record": str(rec), "claim": "fully_connected", **extra_options}}


def test_the_delegate_and_its_options_reach_every_model_that_is_judged_or_served(tmp_path, start_daemon, model_path,
                                                                                  test_delegate):
    generate_keypair(tmp_path / "k1")
    rec = tmp_path / "delegate.jsonl"
    d = start_daemon(model={"delegate": delegate_cfg(test_delegate, rec)},
                     update={**trusted(tmp_path, "k1"), "probation_s": 1.0})
    pid = d.proc.pid
    st = d.call("status")
    assert st["delegate"]["state"] == "active" and st["delegate"]["name"].startswith("testdelegate")
    boot = records(rec)
    assert {r["pid"] for r in boot if r["event"] == "create"} - {pid}, boot  # model.initial checked in the child
    served = [r for r in boot if r["pid"] == pid and r["event"] == "prepare"]
    assert served and all(r["claimed"] == 1 and r["options"]["claim"] == "fully_connected" for r in served)
    assert wait_until(lambda: (d.call("status")["telemetry"] or {}).get("model", {}).get("delegate"))["state"] == "active"

    mark = len(records(rec))
    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2), 2, base=model_path)
    r = cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"])
    assert r.returncode == 0, r.stderr
    upd = records(rec)[mark:]
    child = [x for x in upd if x["event"] == "prepare" and x["pid"] != pid]
    daemon = [x for x in upd if x["event"] == "prepare" and x["pid"] == pid]
    assert child and all(x["claimed"] == 1 for x in child), upd  # the health child: candidate and baseline
    assert len({x["pid"] for x in child}) == 1 and len(child) == 2
    assert daemon and daemon[0]["claimed"] == 1  # the new model, loaded and warmed in the daemon
    wait_until(lambda: slots(d)["b"]["status"] == "good", timeout=20)
    d.stop()

    # the offline rollback pre-check loads the target on the same delegate, in the CLI's process
    mark = len(records(rec))
    p = subprocess.Popen([sys.executable, "-m", "edgeagent", "-c", str(d.config_path), "rollback"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    pre = [x for x in records(rec)[mark:] if x["event"] == "prepare"]
    assert [x["pid"] for x in pre] == [p.pid] and pre[0]["claimed"] == 1

    # bench: the raw and the agent loop on the delegate
    mark = len(records(rec))
    b = subprocess.Popen([sys.executable, "-m", "edgeagent", "bench", str(model_path), "--seconds", "0.5", "--rounds",
                          "1", "--delegate", str(test_delegate), "--delegate-option", f"record={rec}",
                          "--delegate-option", "claim=fully_connected"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = b.communicate(timeout=120)
    assert b.returncode == 0, err
    assert "delegate testdelegate" in out and ": active" in out
    used = [x for x in records(rec)[mark:] if x["event"] == "destroy"]
    assert [x["pid"] for x in used] == [b.pid] and used[0]["invokes"] > 0  # it ran the claimed nodes


def test_an_exclusive_accelerator_is_checked_in_the_daemon_never_in_a_child(tmp_path, start_daemon, model_path,
                                                                            test_delegate):
    generate_keypair(tmp_path / "k1")
    rec, lock = tmp_path / "delegate.jsonl", tmp_path / "coral.lock"
    dcfg = {**delegate_cfg(test_delegate, rec, single_open=str(lock)), "exclusive": True}
    d = start_daemon(model={"delegate": dcfg}, update={**trusted(tmp_path, "k1"), "probation_s": 1.0})
    pid = d.proc.pid
    # the stick is held: another process cannot open it (as libusb refuses a second claim)
    b = subprocess.run([sys.executable, "-m", "edgeagent", "bench", str(model_path), "--seconds", "0.5", "--rounds",
                        "1", "--delegate", str(test_delegate), "--delegate-option", f"single_open={lock}",
                        "--delegate-option", f"record={rec}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert b.returncode != 0 and "held by another process" in b.stderr, b.stderr

    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2), 2, base=model_path)
    r = cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"])
    assert r.returncode == 0, r.stderr
    committed = wait_until(lambda: next((e for e in d.call("status")["events"] if e["event"] == "update.committed"),
                                        None), timeout=20)
    assert "paired" not in committed.get("reason", "")  # no shadow pairs on an exclusive accelerator
    daemon_side = [x for x in records(rec) if x["options"].get("claim")]  # (the bench above passed no claim)
    assert {x["pid"] for x in daemon_side} == {pid}, daemon_side  # model.initial, health: all in the daemon
    assert not [x for x in daemon_side if x["event"] == "create_busy"]
    assert sum(x["event"] == "prepare" for x in daemon_side) >= 4  # initial + served + candidate + baseline + new


def test_a_crash_in_the_in_process_check_rolls_the_update_back_at_the_next_start(tmp_path, model_path, test_delegate):
    generate_keypair(tmp_path / "k1")
    rec, lock = tmp_path / "delegate.jsonl", tmp_path / "coral.lock"
    cfg = base_config(tmp_path, model_path,
                      model={"delegate": {**delegate_cfg(test_delegate, rec, single_open=str(lock)), "exclusive": True}},
                      update={**trusted(tmp_path, "k1"), "probation_s": 1.0})
    d = Daemon(tmp_path, cfg).start()
    try:
        _crash_during_the_check(tmp_path, d, rec, model_path)
    finally:
        d.kill()  # killed above; or the check was never reached: never leave the daemon behind
    d2 = Daemon(tmp_path, cfg, name="again").start()
    try:
        b = wait_until(lambda: (lambda s: s if s["status"] == "bad" and "health" in (s["reason"] or "") else None)(
            slots(d2)["b"]), timeout=30)
        assert "health.crashed" in b["reason"] and "in-process" in b["reason"], b
        assert d2.call("status")["model"]["version"] == 1
        assert not (tmp_path / "state/health-in-process.json").exists()
    finally:
        d2.stop()


def _crash_during_the_check(tmp_path, d, rec, model_path):
    slow = testmodels.write_model(tmp_path / "v2.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1,
                                  version_tag=2, spin=2_000_000)  # 0.3 s an invoke: a check of seconds
    rel = release(tmp_path, tmp_path, slow, 2, base=model_path)
    mark = len(records(rec))
    inst = subprocess.Popen([sys.executable, "-m", "edgeagent", "-c", str(d.config_path), "install", rel["manifest"],
                             "--payload", rel["payload"]], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # the candidate is being checked in the daemon: it dies there (a crash of the interpreter)
        wait_until(lambda: any(x["event"] == "prepare" and x["pid"] == d.proc.pid for x in records(rec)[mark:]),
                   timeout=30, step=0.02)
        assert (tmp_path / "state/health-in-process.json").exists()
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)
    finally:
        inst.kill()
        inst.wait()


def test_fallback_cpu_serves_without_the_delegate_and_says_so_fallback_fail_stops(tmp_path, start_daemon, model_path,
                                                                                  test_delegate):
    rec = tmp_path / "delegate.jsonl"
    d = start_daemon(model={"delegate": {**delegate_cfg(test_delegate, rec, fail="1"), "fallback": "cpu"}})
    st = d.call("status")
    assert st["delegate"]["state"] == "fallback" and "told to fail" in st["delegate"]["reason"]
    ev = next(e for e in st["events"] if e["event"] == "model.delegate_fallback")
    assert ev["delegate"].startswith("testdelegate")
    d.stop()

    cfg = base_config(tmp_path / "x", model_path, model={"delegate": delegate_cfg(test_delegate, rec, fail="1")})
    (tmp_path / "x").mkdir()
    f = Daemon(tmp_path / "x", cfg, name="fail")
    f.start(wait_ready=False)
    try:
        assert f.proc.wait(60) == 2
        assert "model.delegate_failed" in f.log() and "told to fail" in f.log()
    finally:
        f.kill()
    assert not (tmp_path / "x/state/state.json").exists()


def test_an_update_that_requires_a_delegate_the_device_lacks_is_refused_before_download(tmp_path, start_daemon,
                                                                                      model_path, test_delegate):
    generate_keypair(tmp_path / "k1")
    d = start_daemon(update=trusted(tmp_path, "k1"))
    target = model(tmp_path, "v2.tflite", version_tag=2)
    r = subprocess.run([sys.executable, "-m", "edgeagent", "release", "--key", str(tmp_path / "k1/edgeagent.key"),
                        "--base", str(model_path), "--target", str(target), "--model", "testmodel", "--version", "2",
                        "--out", str(tmp_path / "rel"), "--requires-delegate", "edgetpu"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "rel/testmodel-2.manifest.json").read_text())
    assert manifest["signed"]["requires"] == {"delegate": "edgetpu"}
    from edgeagent.errors import CommandError

    try:
        d.call("update", {"manifest": manifest, "payload_url": "http://127.0.0.1:9/never-fetched.bsdiff4"})
        raise AssertionError("accepted")
    except CommandError as e:
        assert e.code == "update.accelerator_missing" and "'edgetpu'" in e.message
    events = [e["event"] for e in d.call("status")["events"]]
    assert "update.received" not in events and "update.downloading" not in events
    staging = tmp_path / "state/staging"
    assert not staging.exists() or not list(staging.iterdir())
