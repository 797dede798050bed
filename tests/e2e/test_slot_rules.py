"""One home for slot decisions (issue 18): the offline CLI and the live daemon write the same
trial record and pick the same rollback target, because both go through state.rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgeagent.state import rules
from edgeagent.state.store import SlotStore
from edgeagent.update.keys import generate_keypair
from tests.e2e.test_update import cli, model, release, trusted
from tests.support.daemon import Daemon, base_config, write_config

TERMS = ("probation_s", "min_inferences", "version", "max_latency_ms", "min_agreement_pct")


def test_offline_install_and_live_switch_write_the_same_trial_record(tmp_path, start_daemon, model_path):
    generate_keypair(tmp_path / "k1")
    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2), 2, base=model_path,
                  health={"probation_s": 60, "min_inferences": 7, "max_latency_ms": 500})
    upd = {**trusted(tmp_path, "k1"), "probation_s": 1.0}
    # offline: no daemon runs on this state directory
    off = tmp_path / "off"
    off.mkdir()
    off_cfg = write_config(off / "c.toml", base_config(off, model_path, update=upd))
    r = cli(off_cfg, "install", rel["manifest"], "--payload", rel["payload"])
    assert r.returncode == 0, r.stderr
    offline = json.loads((off / "state" / "state.json").read_text())["trial"]
    # live: the daemon switches to it (the manifest's 60 s probation keeps it on trial)
    d = start_daemon(update=upd)
    r = cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"])
    assert r.returncode == 0, r.stderr
    live = json.loads((tmp_path / "state" / "state.json").read_text())["trial"]

    assert set(offline) == set(live), (sorted(offline), sorted(live))
    assert {k: offline[k] for k in TERMS} == {k: live[k] for k in TERMS} == {
        "probation_s": 60.0, "min_inferences": 7, "version": 2, "max_latency_ms": 500.0, "min_agreement_pct": None}
    assert set(offline["before"]) == set(live["before"]) == {"invoke_p50_ms", "rss_mb"}
    assert offline["before"]["invoke_p50_ms"] is None and live["before"]["invoke_p50_ms"] > 0
    assert isinstance(offline["expected_ms"], float) and isinstance(live["expected_ms"], float)


def _committed_v2(tmp_path: Path, model_path: Path, *, spoil_a: bool) -> Path:
    """A state directory serving a committed v2 from slot b (slot a: v1, good or spoiled)."""
    d = tmp_path / ("s" if spoil_a else "g")
    d.mkdir()
    store = SlotStore(d / "state")
    store.boot(model_name="testmodel", initial=str(model_path), initial_version=1, max_attempts=2)
    v2 = model(tmp_path, f"v2-{d.name}.tflite", version_tag=2)
    p = store.prepare_target("b")
    shutil.copy(v2, p)
    from edgeagent.state.atomic import sha256_file

    store.record_installed("b", model="testmodel", version=2, sha256=sha256_file(p), size=p.stat().st_size,
                           health={"ok": True})
    store.begin_trial("b", rules.TrialTerms(probation_s=1.0, min_inferences=1, version=2))
    store.commit()
    if spoil_a:
        st = store.state()
        store.transition(lambda s: setattr(s.slots["a"], "status", "bad") or setattr(s.slots["a"], "reason", "spoiled"))
        assert store.state().slots["a"].status == "bad" and st.active == "b"
    return d


def _rollback_both_ways(tmp_path: Path, model_path: Path, state_dir: Path) -> tuple[dict, dict]:
    twin = state_dir.with_name(state_dir.name + "l")
    shutil.copytree(state_dir, twin)
    off_cfg = write_config(state_dir / "c.toml", base_config(state_dir, model_path))
    r = cli(off_cfg, "rollback", "--json")
    offline = json.loads(r.stdout)
    d = Daemon(twin, base_config(twin, model_path), name="live").start()
    try:
        r = cli(d.config_path, "rollback", "--json")
        live = json.loads(r.stdout)
    finally:
        d.stop()
    return offline, live


def test_offline_and_live_rollback_pick_the_same_target(tmp_path, model_path):
    good = _committed_v2(tmp_path, model_path, spoil_a=False)
    expected = rules.rollback_target(SlotStore(good / "state").state())
    offline, live = _rollback_both_ways(tmp_path, model_path, good)
    assert expected == "a"
    assert offline["slot"] == live["slot"] == expected and offline["from"] == live["from"] == "b"
    assert offline["mode"] == "offline" and live["mode"] == "live"

    spoiled = _committed_v2(tmp_path, model_path, spoil_a=True)
    offline, live = _rollback_both_ways(tmp_path, model_path, spoiled)
    assert offline["ok"] is False and live["ok"] is False
    assert offline["error"]["code"] == live["error"]["code"] == "state.no_rollback_target"
    assert offline["error"]["message"] == live["error"]["message"] == "slot a holds no good model (bad: spoiled)"
