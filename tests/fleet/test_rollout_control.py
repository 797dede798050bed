"""Driving rollouts with the real CLI against one broker and three daemons: canaries, detach,
pause and resume, abort with rollback (commands carry a Message Expiry), payload by MQTT
transfer, and a bad rollout document, which no device may act on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from edgeagent.engine import testmodels
from edgeagent.update.release import make_release
from tests.mqtt.test_mqtt_daemon import Peer
from tests.support.daemon import REPO, Daemon, base_config

pytestmark = pytest.mark.long(seconds=35)

DEVS = ("ra", "rb", "rc")


@pytest.fixture
def trio(tmp_path, broker, signer, model_path):
    ds = {}
    for dev in DEVS:
        t = tmp_path / dev
        t.mkdir()
        cfg = base_config(t, model_path, device={"id": dev, "groups": ["lab"]},
                          mqtt={"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                          input={"source": "synthetic", "rate_hz": 20.0},
                          update={"trusted_keys": [str(signer / "edgeagent.pub")], "probation_s": 0.5,
                                  "min_inferences": 3})
        ds[dev] = Daemon(t, cfg, name=dev)
    for d in ds.values():
        d.start(wait_ready=False)
    for d in ds.values():
        d.wait_for("READY=1", timeout=60)
    yield ds
    for d in ds.values():
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def release(tmp_path, signer, base, version, **kw):
    target = testmodels.write_model(tmp_path / f"v{version}.tflite", kind="dense", input_shape=(1, 16), outputs=4,
                                    seed=1, version_tag=version, **kw)
    return make_release(keys=[str(signer / "edgeagent.key")], target=target, base=base, model="testmodel",
                        version=version, out_dir=tmp_path / f"rel{version}")


def ea(tmp_path, broker, *args, timeout=120):
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"))
    return subprocess.run([sys.executable, "-m", "edgeagent", *args, "--broker", f"127.0.0.1:{broker.port}"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def serving(d: Daemon) -> int:
    return d.call("status")["model"]["version"]


def wait(pred, timeout=60.0, what=""):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_canary_detach_pause_resume(tmp_path, broker, signer, model_path, trio):
    rel = release(tmp_path, signer, model_path, 2)
    url = f"file://{rel['payload']}"  # refused over MQTT: the canary must refuse, and the rollout halt
    r = ea(tmp_path, broker, "rollout", "start", rel["manifest"], "--group", "lab", "--payload-url", url,
           "--canary", "rb", "--phases", "100", "--soak", "0", "--id", "c1", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["error"]["code"] == "rollout.halted"
    assert out["tally"]["devices"]["refused"] == ["rb"] and out["tally"]["members"] == 1
    assert "update.url_refused" in trio["rb"].log()
    assert [serving(d) for d in trio.values()] == [1, 1, 1]
    # the halted rollout is over; a new one with an HTTP-free payload path: MQTT transfer
    r = ea(tmp_path, broker, "rollout", "resume", "c1")
    assert r.returncode == 1 and "rollout.bad_state: rollout c1 is halted" in r.stderr

    r = ea(tmp_path, broker, "rollout", "start", rel["manifest"], "--group", "lab", "--transfer", "--canary", "rb",
           "--phases", "100", "--soak", "0", "--id", "c2", "--detach", "--json")
    assert r.returncode == 0, r.stderr
    # the canary starts and waits for its chunks: with --transfer, a controller serves them
    wait(lambda: "rollout c2 (group lab, phase 0 at 0.0%): taking v2" in trio["rb"].log(), 30, "the canary did not start")
    r = ea(tmp_path, broker, "rollout", "pause", "c2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["rollout"]["state"] == "paused"
    time.sleep(1.0)
    assert [serving(trio[x]) for x in ("ra", "rc")] == [1, 1]
    r = ea(tmp_path, broker, "rollout", "resume", "c2", "--payload", rel["payload"], "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["rollout"]["state"] == "complete" and out["tally"]["committed"] == 3
    assert out["served_chunks"] > 0  # the non-canary devices got the payload from the controller
    assert [serving(d) for d in trio.values()] == [2, 2, 2]
    for d in trio.values():
        assert "rollout=c2" in d.log()  # the events of the update name the rollout
    r = ea(tmp_path, broker, "rollout", "status", "c2")
    assert r.returncode == 0 and "rollout c2: complete" in r.stdout and "3 committed" in r.stdout


def test_abort_with_rollback_sends_expiring_commands(tmp_path, broker, signer, model_path, trio):
    import http.server
    import threading
    import functools

    rel = release(tmp_path, signer, model_path, 2)
    h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "rel2"))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    spy = Peer(broker.port)
    spy.c.subscribe("edgeagent/+/cmd", 1)
    try:
        url = f"http://127.0.0.1:{srv.server_port}/{os.path.basename(rel['payload'])}"
        r = ea(tmp_path, broker, "rollout", "start", rel["manifest"], "--group", "lab", "--payload-url", url,
               "--phases", "100", "--id", "a1", "--detach")
        assert r.returncode == 0, r.stderr
        wait(lambda: all(serving(d) == 2 and not d.call("status")["model"].get("trial") for d in trio.values())
             and all(d.call("status")["rollout"]["result"] == "committed" for d in trio.values()), 60, "not all at v2")
        r = ea(tmp_path, broker, "rollout", "abort", "a1", "--rollback", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["rollout"]["state"] == "aborted" and sorted(out["rollout"]["rolled_back"]) == list(DEVS)
        wait(lambda: [serving(d) for d in trio.values()] == [1, 1, 1], 30, "the rollback did not happen")
        cmds = [(t, b, p) for t, b, p in spy.msgs if t.endswith("/cmd") and isinstance(b, dict)]
        assert sorted(t for t, _, _ in cmds) == [f"edgeagent/{d}/cmd" for d in DEVS]
        for _, body, props in cmds:
            assert body["op"] == "rollback" and "a1 aborted" in body["args"]["reason"]
            assert 0 < props.MessageExpiryInterval <= 600  # a stale rollback is dropped, not run on reconnect
        # the rollout does not come back: the devices remember it and the document says aborted
        time.sleep(1.0)
        assert [serving(d) for d in trio.values()] == [1, 1, 1]
    finally:
        spy.close()
        srv.shutdown()


def test_a_bad_rollout_document_is_refused_in_one_line_and_changes_nothing(tmp_path, broker, trio):
    spy = Peer(broker.port)
    try:
        for junk in (b"{not json", json.dumps({"id": "x", "group": "lab", "state": "running"}).encode()):
            spy.c.publish("edgeagent/group/lab/rollout", junk, qos=1, retain=True)
            time.sleep(0.5)
        for d in trio.values():
            lines = [ln for ln in d.log().splitlines() if "rollout document for group lab refused" in ln]
            assert len(lines) == 2, d.log()[-2000:]
            assert "rollout.bad_doc" in lines[0]
            assert d.call("status")["model"]["version"] == 1
        spy.c.publish("edgeagent/group/lab/rollout", b"", qos=1, retain=True)
    finally:
        spy.close()
