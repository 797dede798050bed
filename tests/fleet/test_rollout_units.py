"""The pure parts of a rollout: membership, the document's parser, the tally and the decision,
and the fleet view. What a device and a controller compute from untrusted retained messages."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.fleet.rollout_doc import (Criteria, DeviceResult, RolloutDoc, RolloutError, bucket, is_member, parse,
                                         parse_result, percentage_for)
from edgeagent.fleet.tally import decide, tally
from edgeagent.fleet.view import FleetView, table

MANIFEST = {"signed": {"version": 7, "model": "m"}, "signatures": []}


def doc(**kw) -> RolloutDoc:
    base = dict(id="r1", group="g", state="running", version=7, manifest=MANIFEST, payload={"payload_url": "http://x/p"},
                phases=(25.0, 100.0), phase=0, percentage=25.0, criteria=Criteria(max_failure_pct=10, min_executed=2,
                                                                                 soak_s=5, device_timeout_s=60),
                phase_started_at=1000.0)
    base.update(kw)
    return RolloutDoc(**base)


def result(dev: str, res: str, rid: str = "r1") -> DeviceResult:
    return DeviceResult(device=dev, rollout=rid, version=7, result=res)


def test_membership_is_stable_proportional_and_differs_between_rollouts():
    devices = [f"d{i}" for i in range(4000)]
    assert [bucket("r1", d) for d in devices[:5]] == [bucket("r1", d) for d in devices[:5]]
    share = sum(bucket("r1", d) < 25 for d in devices) / len(devices)
    assert 0.23 < share < 0.27
    first_r1 = {d for d in devices if bucket("r1", d) < 5}
    first_r2 = {d for d in devices if bucket("r2", d) < 5}
    assert len(first_r1 & first_r2) < len(first_r1) / 3  # not the same devices first every time
    d = doc(canary=("d7",), percentage=0.0)
    assert is_member(d, "d7") and not any(is_member(d, x) for x in devices if x != "d7")


@pytest.mark.parametrize("n,pct,at_least", [(12, 5, 1), (12, 25, 2), (12, 50, 2), (3, 10, 2), (100, 5, 1), (12, 25, 20)])
def test_a_phase_holds_its_share_of_the_known_devices_exactly(n, pct, at_least):
    known = [f"dev{i}" for i in range(n)]
    eff = percentage_for("rollout-x", known, pct, at_least=at_least)
    inside = [d for d in known if bucket("rollout-x", d) < eff]
    assert len(inside) == min(n, max(at_least, math.ceil(n * pct / 100)))
    assert percentage_for("rollout-x", known, 100) == 100.0


def test_the_document_round_trips_and_bad_documents_get_one_coded_line():
    d = doc(canary=("a", "b"), timed_out=("c",))
    assert parse(d.dumps()) == d
    good = d.to_json()
    bad = {
        "not JSON": b"{",
        "not an object": b"[1]",
        "bad id": json.dumps({**good, "id": "a/b"}).encode(),
        "bad state": json.dumps({**good, "state": "exploded"}).encode(),
        "version differs from the manifest": json.dumps({**good, "version": 8}).encode(),
        "two payload sources": json.dumps({**good, "payload": {"payload_url": "http://x", "transfer": {}}}).encode(),
        "a file path": json.dumps({**good, "payload": {"payload_b64": "AAAA"}}).encode(),
        "phases out of range": json.dumps({**good, "phases": [0, 100]}).encode(),
        "phase beyond the plan": json.dumps({**good, "phase": 9}).encode(),
        "percentage above 100": json.dumps({**good, "percentage": 101}).encode(),
        "criteria of the wrong type": json.dumps({**good, "criteria": {"max_failure_pct": "10"}}).encode(),
        "too large": b" " * (1 << 20 + 1),
    }
    for why, raw in bad.items():
        with pytest.raises(RolloutError) as ei:
            parse(raw)
        assert ei.value.code == "rollout.bad_doc", why
        assert "\n" not in str(ei.value), why


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=6),
                    max_leaves=30))
def test_no_document_raises_anything_but_a_rollout_error(value):
    d = doc().to_json()
    for candidate in (value, {**d, "criteria": value}, {**d, "phases": value}, {**d, "canary": value},
                      {**d, "payload": value}, {**d, "phase": value}):
        try:
            parse(json.dumps(candidate).encode())
        except RolloutError:
            pass
        parse_result("dev", json.dumps(candidate).encode())  # None or a result, never an exception


def test_tally_and_decide_through_a_rollout():
    group = ["a", "b", "c", "d"]
    d = doc(percentage=100.0, phase=1)
    res = {"a": result("a", "committed"), "b": result("b", "trial"), "c": None, "d": result("d", "committed", "old")}
    t = tally(d, group, res, now=1010)
    assert (t.committed, t.in_progress, t.waiting) == (("a",), ("b",), ("c", "d"))  # d's result is another rollout's
    assert decide(d, t, 1010, None).action == "wait"
    res.update(b=result("b", "committed"), c=result("c", "committed"), d=result("d", "committed"))
    t = tally(d, group, res, now=1020)
    assert t.settled and t.executed == 4 and t.failure_pct == 0
    assert decide(d, t, 1020, settled_since=1018).action == "wait"  # soaking 5 s
    assert decide(d, t, 1024, settled_since=1018).action == "complete"
    assert decide(dataclasses.replace(d, phase=0), t, 1024, settled_since=1018).action == "advance"


def test_failures_halt_once_enough_results_are_in():
    group = ["a", "b", "c"]
    d = doc(percentage=100.0)
    t = tally(d, group, {"a": result("a", "refused")}, now=1001)
    assert decide(d, t, 1001, None).action == "wait"  # 1 of min 2 executed
    t = tally(d, group, {"a": result("a", "refused"), "b": result("b", "committed")}, now=1001)
    dec = decide(d, t, 1001, None)
    assert dec.action == "halt" and "1 of 2 failed (50% > 10%)" in dec.reason
    lenient = dataclasses.replace(d, criteria=dataclasses.replace(d.criteria, max_failure_pct=50))
    assert decide(lenient, t, 1001, None).action == "wait"  # 50% is not above 50%: c still to come


def test_the_halt_and_the_tally_name_each_failed_devices_reason_code():
    """Issue 20, point 4: the reason (update.replay) was only in the device's retained P/rollout."""
    group = ["a", "b", "c"]
    d = doc(percentage=100.0)
    res = {"a": DeviceResult(device="a", rollout="r1", version=7, result="refused", code="update.replay",
                             reason="version 7 was installed before"),
           "b": DeviceResult(device="b", rollout="r1", version=7, result="rolled_back",
                             reason="probation.too_slow: p50 9 ms"),
           "c": result("c", "committed")}
    t = tally(d, group, res, now=1001)
    assert t.to_json()["codes"] == {"a": "update.replay", "b": "probation.too_slow"}
    dec = decide(d, t, 1001, None)
    assert dec.action == "halt"
    assert "refused a (update.replay); rolled back b (probation.too_slow); timed out none" in dec.reason


def test_a_silent_device_times_out_counts_as_failed_and_a_late_answer_replaces_that():
    group = ["a", "b"]
    d = doc(percentage=100.0)
    res = {"a": result("a", "committed"), "b": None}
    assert decide(d, tally(d, group, res, now=1030), 1030, None).action == "wait"
    dec = decide(d, tally(d, group, res, now=1061), 1061, None)
    assert dec.action == "time_out" and dec.devices == ("b",)
    d = dataclasses.replace(d, timed_out=("b",))
    t = tally(d, group, res, now=1062)
    assert t.timed_out == ("b",) and t.failure_pct == 50 and decide(d, t, 1062, None).action == "halt"
    res["b"] = result("b", "committed")
    t = tally(d, group, res, now=1063)
    assert t.timed_out == () and t.committed == ("a", "b")


def test_a_step_with_no_devices_moves_on():
    d = doc(percentage=0.0, canary=())
    t = tally(d, [], {}, now=1001)
    assert decide(d, t, 1010, settled_since=1001).action == "advance"


def test_fleet_view_with_a_custom_prefix():
    v = FleetView("site/{device_id}/ea")
    assert v.topics()[0] == ("site/+/ea/status", 1)
    assert v.split("site/cam1/ea/status") == ("cam1", "status")
    assert v.split("site/cam1/other/status") is None and v.split("site/cam1/ea/a/b") is None
    v.ingest("site/cam1/ea/status", json.dumps({"state": "online", "groups": ["g"],
                                                 "model": {"name": "m", "version": 3, "slot": "b"}}).encode(), now=100)
    v.ingest("site/cam1/ea/telemetry", json.dumps({"inference": {"fps": 9.5, "latency_ms": {"p95": 2.25}},
                                                    "thermal": {"cpu": 51.0, "gpu": 49.0},
                                                    "power": {"total_w": None, "agent_w": 0.4, "source": "estimate"},
                                                    "quality": {"reference": "signed", "psi_class": 0.41,
                                                                "psi_input": 0.05, "drift": ["class"]}}
                                                   ).encode(), now=101)
    v.ingest("site/cam1/ea/rollout", json.dumps({"rollout": "r9", "version": 3, "result": "committed"}).encode())
    v.ingest("site/cam2/ea/status", b"not json")
    v.ingest("site/cam3/ea/status", json.dumps({"state": "offline", "groups": ["h"]}).encode(), now=50)
    rows = v.rows()
    assert [r["id"] for r in rows] == ["cam1", "cam3"]
    r = rows[0]
    assert (r["version"], r["slot"], r["fps"], r["p95_ms"], r["temp_c"], r["power_w"], r["power_source"]) == \
        (3, "b", 9.5, 2.25, 51.0, 0.4, "estimate")
    assert r["rollout"] == {"id": "r9", "result": "committed", "version": 3}
    assert v.in_group("g") == ["cam1"] and [x["id"] for x in v.rows("h")] == ["cam3"]
    lines = table(rows, now=110)
    assert lines[0].split()[:3] == ["DEVICE", "STATE", "GROUPS"]
    assert lines[1].split() == ["cam1", "online", "g", "m", "v3", "b", "-", "9.5", "2.25", "51.0", "0.40~",
                                "0.41", "DRIFT", "r9:committed", "9s"]  # the largest PSI, and that it drifts
    assert table(v.rows("h"), now=110)[1].split()[-3] == "-"  # no quality figures: no PSI
    v2 = FleetView()
    assert v2.split("edgeagent/group/status") is None  # the group topics are not a device
