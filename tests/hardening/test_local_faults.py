"""Issue 19, points 7, 8, 11 and 12: forged rollout answers and squatted ids, a restart with an
install not switched to yet, a replaced slot file left labelled good, a reply routed onto another
device's topic. Real files, the real store, follower and tally."""

from __future__ import annotations

import json
import os
import shutil

from edgeagent.events import EventBus
from edgeagent.fleet.follower import RolloutFollower
from edgeagent.fleet.rollout_doc import DeviceResult, parse_result
from edgeagent.fleet.tally import decide, tally
from edgeagent.state.atomic import sha256_file
from edgeagent.state.store import SlotStore
from edgeagent.transport.topics import reply_topic_ok
from edgeagent.update.pending import pending_path
from tests.fleet.test_rollout_units import MANIFEST, doc


def test_a_forged_answer_from_a_non_member_does_not_halt_a_rollout():
    d = doc(percentage=100.0)
    group = ["a", "b"]  # devices whose retained status names the group
    evil = parse_result("evil", json.dumps({"rollout": "r1", "result": "refused", "version": 7}).encode())
    results = {"a": DeviceResult("a", "r1", 7, "committed", manifest=d.digest), "evil": evil}
    t = tally(d, group, results, now=1001)
    assert "evil" not in t.members and t.refused == ()
    assert decide(d, t, 1001, None).action == "wait"  # b still to come; nothing failed


def test_a_squatted_rollout_id_is_another_rollout(tmp_path):
    """A junk document took the id first and was refused: the real document with the same id (and
    another manifest) is taken, and the refusal recorded for the junk is not counted for it."""
    junk = doc(percentage=100.0, manifest={**MANIFEST, "signed": {**MANIFEST["signed"], "junk": 1}})
    real = doc(percentage=100.0)
    assert junk.digest != real.digest
    (tmp_path / "rollout.json").write_text(json.dumps({"current": None, "done": {"r1": {
        "rollout": "r1", "version": 7, "result": "refused", "manifest": junk.digest, "ts": 1.0}}}))
    started = []

    class Updates:
        busy = False

        def start_update(self, args, reply, *, request_id, source="mqtt"):
            started.append(args["manifest"])

    f = RolloutFollower(device_id="a", state_dir=tmp_path, slots=lambda: None, events=EventBus(), updates=Updates(),
                        model_info=lambda: {"version": 1}, publish=lambda sub, payload: None)
    f._consider(real)
    assert started == [real.manifest] and f.current()["manifest"] == real.digest
    old = DeviceResult("a", "r1", 7, "refused", manifest=junk.digest)
    assert tally(real, ["a"], {"a": old}, now=1001).refused == ()


def _store_with_v2_installed(tmp_path):
    (tmp_path / "v1").write_bytes(b"model one")
    s = SlotStore(tmp_path / "state")
    s.boot(model_name="m", initial=str(tmp_path / "v1"), initial_version=1, max_attempts=2)
    p = s.prepare_target("b")
    p.write_bytes(b"model two!")
    s.record_installed("b", model="m", version=2, sha256=sha256_file(p), size=p.stat().st_size, health={"ok": True})
    return s


def test_a_restart_before_the_switch_is_not_reported_as_rolled_back(tmp_path):
    s = _store_with_v2_installed(tmp_path)
    assert s.state().slots["b"].reason == "installed, not switched to yet"
    state_dir = tmp_path / "state"
    pending_path(state_dir).parent.mkdir(parents=True, exist_ok=True)
    pending_path(state_dir).write_text(json.dumps({"manifest": {}, "source": {}}))
    (state_dir / "rollout.json").write_text(json.dumps({"current": {"rollout": "r1", "version": 2, "result": "started",
                                                                    "ts": 1.0}, "done": {}}))
    published = []
    f = RolloutFollower(device_id="a", state_dir=state_dir, slots=s.state, events=EventBus(), updates=None,
                        model_info=lambda: {"version": 1}, publish=lambda sub, payload: published.append(payload))
    assert f.current()["result"] == "started"  # the resumed update's own events will say how it ends
    assert published == []
    # without the pending update, the same slot is still no verdict: the rollout is taken again
    os.unlink(pending_path(state_dir))
    f = RolloutFollower(device_id="a", state_dir=state_dir, slots=s.state, events=EventBus(), updates=None,
                        model_info=lambda: {"version": 1}, publish=lambda sub, payload: published.append(payload))
    assert f.current() is None and published == []


def test_a_replaced_slot_file_loses_its_good_label_when_boot_seeds_the_other_slot(tmp_path):
    (tmp_path / "v1").write_bytes(b"model one")
    s = SlotStore(tmp_path / "state")
    s.boot(model_name="m", initial=str(tmp_path / "v1"), initial_version=1, max_attempts=2)
    p = s.slot_path("a")
    os.chmod(p, 0o644)
    p.write_bytes(b"something else")
    plan = s.boot(model_name="m", initial=str(tmp_path / "v1"), initial_version=1, max_attempts=2)
    st = s.state()
    assert plan.slot == "b" and st.slots["b"].status == "good"
    assert st.slots["a"].status == "bad" and "sha256 mismatch" in st.slots["a"].reason
    shutil.rmtree(tmp_path / "state")


def test_a_reply_never_lands_on_another_devices_topics():
    me = "edgeagent/dev1"
    for topic in ("edgeagent/dev2/rollout", "edgeagent/dev2/status", "edgeagent/dev2/cmd", "edgeagent/dev2/events"):
        assert reply_topic_ok(me, topic) == "another device's topic", topic
    assert reply_topic_ok(me, "edgeagent/dev1/cmd/reply/x") is None
    assert reply_topic_ok(me, "ops/inbox/42") is None
