"""`commit` during a trial does not skip the checks (issue 19, point 10)."""

from __future__ import annotations

import time

from edgeagent.update.keys import generate_keypair
from tests.e2e.test_update import cli, model, release, slots, trusted, wait_until


def test_a_model_committed_by_command_that_then_fails_is_rolled_back(tmp_path, start_daemon, model_path):
    generate_keypair(tmp_path / "k1")
    d = start_daemon(update={**trusted(tmp_path, "k1"), "probation_s": 10.0, "min_inferences": 5})
    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2, nan_after=40), 2, base=model_path)
    assert cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"]).returncode == 0
    r = d.call("commit")  # the Home Assistant button, pressed at once
    assert r["status"] == "good" and r["watched"] is True
    wait_until(lambda: d.call("status")["model"]["version"] == 1, timeout=15)
    b = slots(d)["b"]
    assert b["status"] == "bad" and "probation.nonfinite" in b["reason"] and "after a commit by command" in b["reason"]
    events = [e["event"] for e in d.call("status")["events"]]
    assert "update.committed" in events and "update.rolled_back" in events
    time.sleep(1.0)  # telemetry from after the swap back
    errors = d.call("status")["telemetry"]["inference"]["errors"]
    time.sleep(1.5)
    assert d.call("status")["telemetry"]["inference"]["errors"] == errors


def test_a_good_model_committed_by_command_stays(tmp_path, start_daemon, model_path):
    generate_keypair(tmp_path / "k1")
    d = start_daemon(update={**trusted(tmp_path, "k1"), "probation_s": 2.0, "min_inferences": 5})
    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2), 2, base=model_path)
    assert cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"]).returncode == 0
    assert d.call("commit")["watched"] is True
    time.sleep(3.0)  # past the probation it was committed ahead of
    assert d.call("status")["model"]["version"] == 2 and slots(d)["b"]["status"] == "good"
    rel3 = release(tmp_path, tmp_path, model(tmp_path, "v3.tflite", version_tag=3), 3, base=tmp_path / "v2.tflite")
    assert cli(d.config_path, "install", rel3["manifest"], "--payload", rel3["payload"]).returncode == 0
