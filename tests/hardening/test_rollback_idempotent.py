"""Idempotent rollback (issue 19, point 5): `rollback {"leave": V}` does nothing once V no longer
serves, the controller never tells a device to roll back twice, and P/rollout says rolled_back."""

from __future__ import annotations

import dataclasses
import json

from edgeagent.events import EventBus
from edgeagent.fleet.controller import RolloutController
from edgeagent.fleet.follower import RolloutFollower
from edgeagent.fleet.rollout_doc import Criteria
from edgeagent.update.keys import generate_keypair
from tests.e2e.test_update import cli, model, release, trusted
from tests.fleet.test_rollout_units import doc


class Recorder:
    """The controller's MQTT client, recording what it publishes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def subscribe_many(self, topics):
        pass

    def publish(self, topic, payload, **kw):
        self.sent.append((topic, json.loads(payload)))


def test_abort_with_rollback_after_a_rollback_on_halt_does_not_redeploy(tmp_path):
    c = Recorder()
    ctl = RolloutController(c, "g", local_dir=tmp_path)
    for dev in ("a", "b"):
        ctl.view.ingest(f"edgeagent/{dev}/status", json.dumps({"state": "online", "groups": ["g"]}).encode())
        ctl.view.ingest(f"edgeagent/{dev}/rollout", json.dumps({"rollout": "r1", "version": 7,
                                                               "result": "committed"}).encode())
    ctl.doc = doc(percentage=100.0, criteria=dataclasses.replace(Criteria(), rollback_on_halt=True))
    ctl.halt("2 of 2 failed")
    rollbacks = [(t, m) for t, m in c.sent if m.get("op") == "rollback"]
    assert sorted(t for t, _ in rollbacks) == ["edgeagent/a/cmd", "edgeagent/b/cmd"]
    assert all(m["args"]["leave"] == 7 for _, m in rollbacks)  # conditional: a repeat does nothing
    n = len(c.sent)
    ctl.halt("aborted by the operator", state="aborted", rollback=True)
    assert [m for _, m in c.sent[n:] if m.get("op") == "rollback"] == []
    assert ctl.doc.state == "aborted" and ctl.doc.rolled_back == ("a", "b")


def test_the_rollout_result_says_rolled_back_after_a_rollback_of_the_committed_version(tmp_path):
    (tmp_path / "rollout.json").write_text(json.dumps({"current": {"rollout": "r1", "version": 7, "result": "committed",
                                                                   "ts": 1.0}, "done": {}}))
    published = []
    bus = EventBus()
    f = RolloutFollower(device_id="a", state_dir=tmp_path, slots=lambda: None, events=bus, updates=None,
                        model_info=lambda: {"version": 7}, publish=lambda sub, payload: published.append(payload))
    bus.emit("rollback", slot="a", version=6, from_version=7, reason="rollout r1 halted")
    kind, _, ev = f._q.get(timeout=1)
    f._on_verdict(ev)
    assert f.current()["result"] == "rolled_back" and published[-1]["result"] == "rolled_back"
    assert json.loads((tmp_path / "rollout.json").read_text())["done"]["r1"]["result"] == "rolled_back"


def test_a_repeated_conditional_rollback_does_nothing_live_and_offline(tmp_path, start_daemon, model_path):
    generate_keypair(tmp_path / "k1")
    d = start_daemon(update={**trusted(tmp_path, "k1"), "probation_s": 0.5, "min_inferences": 5})
    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2), 2, base=model_path)
    assert cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"], "--wait").returncode == 0
    first = json.loads(cli(d.config_path, "rollback", "--leave", "2", "--json").stdout)
    assert first["rolled_back"] is True and first["version"] == 1 and first["from_version"] == 2
    again = json.loads(cli(d.config_path, "rollback", "--leave", "2", "--json").stdout)  # a second press
    assert again["rolled_back"] is False and again["version"] == 1 and "not serving" in again["note"]
    assert d.call("status")["model"]["version"] == 1
    assert json.loads(cli(d.config_path, "rollback", "--to", "1", "--json").stdout)["rolled_back"] is False
    d.stop()
    # offline, the same rule
    off = json.loads(cli(d.config_path, "rollback", "--leave", "2", "--json").stdout)
    assert off["rolled_back"] is False and off["mode"] == "offline"
    back = json.loads(cli(d.config_path, "rollback", "--to", "2", "--json").stdout)
    assert back["rolled_back"] is True and back["version"] == 2 and back["mode"] == "offline"
