"""The slot store's transitions, recovery from a damaged state, and the lock between processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeagent.errors import StateError
from edgeagent.state.atomic import sha256_file
from edgeagent.state.store import SlotStore, TrialTerms

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path):
    (tmp_path / "v1.tflite").write_bytes(b"model one")
    (tmp_path / "v2.tflite").write_bytes(b"model two!")
    s = SlotStore(tmp_path / "state")
    s.boot(model_name="m", initial=str(tmp_path / "v1.tflite"), initial_version=1, max_attempts=2)
    return s


def boot(s, tmp_path, attempts=2):
    return s.boot(model_name="m", initial=str(tmp_path / "v1.tflite"), initial_version=1, max_attempts=attempts)


def install(s, tmp_path, version=2):
    slot = s.inactive_slot()
    p = s.prepare_target(slot)
    assert s.state().slots[slot].status == "bad" and s.state().slots[slot].reason == "installing"
    p.write_bytes((tmp_path / "v2.tflite").read_bytes())
    s.record_installed(slot, model="m", version=version, sha256=sha256_file(p), size=p.stat().st_size, health={"ok": True})
    return slot


def test_first_start_seeds_slot_a(store):
    st = store.state()
    assert st.active == "a" and st.slots["a"].status == "good" and st.slots["a"].version == 1
    assert st.high_water == {"m": 1} and st.slots["b"] is None
    assert store.verify_slot("a")


def test_no_initial_model_is_a_clear_error(tmp_path):
    with pytest.raises(StateError) as ei:
        SlotStore(tmp_path / "s").boot(model_name="m", initial="", initial_version=1, max_attempts=2)
    assert ei.value.code == "state.no_model" and "model.initial" in ei.value.message


def test_install_trial_commit_rollback(store, tmp_path):
    with pytest.raises(StateError) as ei:
        store.prepare_target("a")
    assert ei.value.code == "state.slot_active"
    slot = install(store, tmp_path)
    store.begin_trial(slot, TrialTerms(probation_s=5, min_inferences=3))
    st = store.state()
    assert st.active == "b" and st.slots["b"].status == "trial" and st.trial["from"] == "a"
    assert st.high_water["m"] == 2  # raised when the trial begins
    store.commit()
    assert store.state().slots["b"].status == "good" and store.state().trial is None
    with pytest.raises(StateError):
        store.commit()
    st = store.rollback("manual", mark_bad=False)
    assert st.active == "a" and st.slots["b"].status == "good" and st.last_rollback["reason"] == "manual"
    table = store.slots_table()
    assert [r["role"] for r in table["slots"]] == ["active", "inactive"] and table["active"] == "a"


def test_rollback_of_a_trial_marks_it_bad(store, tmp_path):
    store.begin_trial(install(store, tmp_path), TrialTerms(probation_s=5, min_inferences=3))
    st = store.rollback("non-finite outputs", mark_bad=True)
    assert st.active == "a" and st.slots["b"].status == "bad" and st.slots["b"].reason == "non-finite outputs"
    with pytest.raises(StateError) as ei:
        store.rollback("again", mark_bad=False)
    assert ei.value.code == "state.no_rollback_target"


def test_restarts_during_trial_count_attempts(store, tmp_path):
    store.begin_trial(install(store, tmp_path), TrialTerms(probation_s=5, min_inferences=3))
    assert boot(store, tmp_path).trial["attempts"] == 1
    assert boot(store, tmp_path).trial["attempts"] == 2
    plan = boot(store, tmp_path)
    assert plan.slot == "a" and plan.trial is None
    assert store.state().slots["b"].status == "bad" and "restart_limit" in store.state().slots["b"].reason
    assert any(e["event"] == "update.rolled_back" for e in plan.events)


def test_a_corrupted_active_model_serves_the_other_slot(store, tmp_path):
    store.begin_trial(install(store, tmp_path), TrialTerms(probation_s=5, min_inferences=3))
    store.commit()
    p = store.slot_path("b")
    data = bytearray(p.read_bytes())
    data[0] ^= 1
    p.write_bytes(bytes(data))
    plan = boot(store, tmp_path)
    assert plan.slot == "a" and store.verify_slot("a")
    assert store.state().slots["b"].status == "bad" and "sha256 mismatch" in store.state().slots["b"].reason
    assert plan.events[0]["event"] == "rollback"


def test_a_corrupted_state_json_recovers_from_prev(store, tmp_path):
    store.begin_trial(install(store, tmp_path), TrialTerms(probation_s=5, min_inferences=3))
    store.commit()
    good = store.state()
    store.file.write_text('{"format": 1, "active": "b", "slo')  # bit rot / a bad manual edit
    assert store.state() is not None
    plan = boot(store, tmp_path)
    assert plan.slot in ("a", "b") and store.verify_slot(plan.slot)
    assert good.generation > 0


def test_both_state_files_gone_bad_rebuilds_from_the_slots(store, tmp_path):
    store.file.write_text("garbage")
    store.prev.write_text("garbage")
    plan = boot(store, tmp_path)
    assert plan.slot == "a" and store.verify_slot("a")
    assert any(e["event"] == "state.recovered" for e in plan.events)


def test_the_lock_keeps_two_processes_apart(store):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from edgeagent.state.lock import StateLock; l = StateLock(sys.argv[1]); l.acquire();"
        "print('held', flush=True); time.sleep(30)"), str(store.dir)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        store.lock.timeout = 0.3
        t0 = time.monotonic()
        with pytest.raises(StateError) as ei:
            store.commit()
        assert ei.value.code == "state.locked" and time.monotonic() - t0 < 2
    finally:
        holder.kill()
        holder.wait()
    store.lock.timeout = 10
    with pytest.raises(StateError) as ei:
        store.commit()
    assert ei.value.code == "state.no_trial"  # the lock is free again once the holder died


def test_state_json_is_the_contract_shape(store, tmp_path):
    store.begin_trial(install(store, tmp_path), TrialTerms(probation_s=5, min_inferences=3))
    d = json.loads(store.file.read_text())
    assert set(d) >= {"active", "slots", "trial", "high_water", "generation"}
    assert set(d["slots"]["b"]) >= {"model", "version", "sha256", "size", "installed_at", "status", "reason"}
    assert set(d["trial"]) >= {"slot", "from", "started_at", "attempts"}


# -- issue 9, point 8: damaged state ----------------------------------------------------------------

def _failed_install(store, tmp_path):
    """v2 written to slot b and refused by its health check (what a real failed update leaves)."""
    slot = install(store, tmp_path)
    store.mark_bad(slot, "health.nonfinite: NaN in output 0")
    return slot


def test_a_deleted_state_json_is_restored_from_prev_not_rebuilt(store, tmp_path):
    slot = _failed_install(store, tmp_path)
    store.file.unlink()
    plan = boot(store, tmp_path)
    st = store.state()
    assert plan.slot == "a" and st.slots["a"].version == 1 and st.slots["a"].status == "good"
    assert st.slots[slot].status == "bad"  # the failed model is not made good
    assert st.high_water == {"m": 1}
    assert any(e["event"] == "state.recovered" for e in plan.events)


def test_both_state_files_truncated_keep_high_water_and_never_bless_unverified_slots(store, tmp_path):
    store.begin_trial(install(store, tmp_path, version=7), TrialTerms(probation_s=5, min_inferences=3))
    store.commit()  # v7 in b is good; high water 7
    slot = store.inactive_slot()
    p = store.prepare_target(slot)
    os.chmod(p, 0o644) if p.exists() else None
    p.write_bytes(b"a model that failed its health check")
    store.mark_bad(slot, "health.too_slow")
    store.file.write_text('{"format": 1, "act')
    store.prev.write_text("")
    plan = boot(store, tmp_path)
    st = store.state()
    assert plan.slot == "b" and st.slots["b"].status == "good" and st.slots["b"].version == 7
    assert st.slots["a"].status == "bad"  # its file is not a model known good
    assert st.high_water["m"] == 7  # never lowered
    assert store.verify_slot(plan.slot)


def test_without_any_record_no_slot_is_blessed_and_model_initial_is_seeded(store, tmp_path):
    store.file.write_text("x")
    store.prev.write_text("x")
    store.anchor.unlink()
    (tmp_path / "state" / "slots" / "a" / "model.tflite").chmod(0o644)
    (tmp_path / "state" / "slots" / "a" / "model.tflite").write_bytes(b"who knows")
    plan = boot(store, tmp_path)
    assert store.verify_slot(plan.slot)
    assert sha256_file(store.slot_path(plan.slot)) == sha256_file(tmp_path / "v1.tflite")


@pytest.mark.parametrize("damage", [
    {"slots": ["a", "b"]},
    {"trial": "yes"},
    {"trial": {"slot": "b", "from": "../../x", "attempts": 0}},
    {"slots": {"a": {"status": "good", "sha256": "../../etc"}, "b": None}},
    {"slots": {"a": {"version": "1", "status": "good"}, "b": None}},
    {"high_water": {"m": "9"}},
    {"active": "../x"},
])
def test_malformed_fields_do_not_crash_the_start_or_escape_the_state_dir(store, tmp_path, damage):
    store.begin_trial(install(store, tmp_path), TrialTerms(probation_s=5, min_inferences=3))
    store.commit()
    d = json.loads(store.file.read_text())
    d.update(damage)
    store.file.write_text(json.dumps(d))
    before = set(Path(tmp_path).rglob("*"))
    plan = boot(store, tmp_path)
    assert store.verify_slot(plan.slot)
    new = {p for p in set(Path(tmp_path).rglob("*")) - before}
    assert all(str(p).startswith(str(store.dir)) for p in new), new
    assert store.state().high_water["m"] == 2


def test_slot_paths_are_only_a_and_b(store):
    with pytest.raises(StateError):
        store.slot_path("../../x")


# -- issue 9, point 9: files are created with O_EXCL | O_NOFOLLOW ---------------------------------

def test_planted_symlinks_at_temp_names_are_never_followed(tmp_path):
    from edgeagent.state.atomic import atomic_write, copy_durable
    from edgeagent.update.patch import copy_full

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    d = tmp_path / "slots" / "b"
    d.mkdir(parents=True)
    # the temp names the writers use (the daemon's pid is predictable)
    for name in ("state.json", "model.tflite", "copy.bin"):
        (d / f".{name}.tmp-{os.getpid()}").symlink_to(victim)
    atomic_write(d / "state.json", b"{}")
    src = tmp_path / "src.bin"
    src.write_bytes(b"new model")
    copy_durable(src, d / "copy.bin")
    import hashlib

    copy_full(src, d / "model.tflite", target_sha256=hashlib.sha256(b"new model").hexdigest(), target_size=9)
    assert victim.read_bytes() == b"precious"
    assert (d / "state.json").read_bytes() == b"{}" and (d / "model.tflite").read_bytes() == b"new model"
    assert not (d / "state.json").is_symlink() and not (d / "model.tflite").is_symlink()
