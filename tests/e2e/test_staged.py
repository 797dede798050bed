"""Download now, switch later (issue 23): with `update.switch_window`, a verified and
health-checked update waits in its slot (staged) and survives a restart; it switches in its
window, at once with the `switch` command, and a newer update replaces it. A signed
`not_before` holds it back the same way. Windows are built around the real local time, so the
daemon decides against its own clock, as on a device."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgeagent.engine import testmodels
from edgeagent.errors import CommandError
from edgeagent.update.keys import generate_keypair
from edgeagent.update.release import make_release
from tests.e2e.test_update import wait_until

REPO = Path(__file__).resolve().parents[2]


def window(start_min: int, end_min: int) -> str:
    """A local-time window from now + start_min to now + end_min (minutes, may be negative)."""
    now = datetime.now()
    return f"{(now + timedelta(minutes=start_min)):%H:%M}-{(now + timedelta(minutes=end_min)):%H:%M}"


@pytest.fixture
def rel(tmp_path):
    generate_keypair(tmp_path / "k")

    def make(version: int, **kw) -> dict:
        target = testmodels.write_model(tmp_path / f"v{version}.tflite", kind="dense", input_shape=(1, 16), outputs=4,
                                        seed=1, version_tag=version)
        r = make_release(keys=[str(tmp_path / "k/edgeagent.key")], target=target, base=None, model="testmodel",
                         version=version, out_dir=tmp_path / f"rel{version}", **kw)
        return {"manifest": json.loads(Path(r["manifest"]).read_text()), "payload_url": Path(r["payload"]).as_uri(),
                "sha256": r["target_sha256"]}

    return make


def slot_b(d) -> dict:
    t = d.call("slots")
    return {**next(s for s in t["slots"] if s["slot"] == "b"), "staged": t["staged"], "active": t["active"]}


def test_a_staged_update_waits_survives_a_restart_and_switches_in_its_window(tmp_path, start_daemon, rel):
    later = window(120, 180)
    upd = {"trusted_keys": [str(tmp_path / "k/edgeagent.pub")], "probation_s": 1.0, "min_inferences": 5,
           "switch_window": [later]}
    d = start_daemon(update=upd, telemetry={"interval_s": 0.5})
    v2 = rel(2)
    r = d.call("update", {k: v2[k] for k in ("manifest", "payload_url")}, timeout=60)
    assert r["state"] == "staged" and r["version"] == 2 and r["slot"] == "b"
    start = datetime.strptime(r["switch_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).astimezone()
    assert f"{start:%H:%M}" == later.split("-")[0]  # the window's next start
    b = slot_b(d)
    assert b["status"] == "staged" and b["version"] == 2 and b["sha256"] == v2["sha256"] and b["active"] == "a"
    st = d.call("status")
    assert st["model"]["version"] == 1 and st["staged"]["version"] == 2 and st["trial"] is None
    tel = wait_until(lambda: (d.call("status")["telemetry"] or {}).get("model", {}).get("staged"))
    assert tel["version"] == 2 and tel["switch_at"] == r["switch_at"]
    # the same push again (a publisher's retry) is answered, not downloaded again
    again = d.call("update", {k: v2[k] for k in ("manifest", "payload_url")}, timeout=60)
    assert again["state"] == "staged" and again["version"] == 2
    out = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(d.config_path), "slots"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert "slot b is staged: v2 switches at" in out.stdout, out.stdout
    # a restart: still staged, still serving v1
    assert d.stop() == 0
    d = start_daemon(name="again", update=upd)
    assert slot_b(d)["status"] == "staged" and d.call("status")["model"]["version"] == 1
    assert d.stop() == 0
    # the next start is inside the window: it switches, on trial like any update, and commits
    d = start_daemon(name="window", update={**upd, "switch_window": [window(-5, 30)]})
    wait_until(lambda: d.call("status")["model"]["version"] == 2, 20)
    wait_until(lambda: d.call("slots")["trial"] is None, 30)
    b = slot_b(d)
    assert b["active"] == "b" and b["status"] == "good" and b["staged"] is None
    names = wait_until(lambda: (lambda n: n if "update.committed" in n else None)(
        [e["event"] for e in d.call("status")["events"]]))
    assert "update.trial" in names


def test_the_switch_command_switches_at_once_and_a_newer_update_replaces_a_staged_one(tmp_path, start_daemon, rel):
    upd = {"trusted_keys": [str(tmp_path / "k/edgeagent.pub")], "probation_s": 1.0, "min_inferences": 5,
           "switch_window": [window(120, 180)]}
    d = start_daemon(update=upd)
    with pytest.raises(CommandError) as e:
        d.call("switch")
    assert e.value.code == "state.nothing_staged"
    assert d.call("update", {k: v for k, v in rel(2).items() if k != "sha256"}, timeout=60)["state"] == "staged"
    v3 = rel(3)
    r = d.call("update", {k: v for k, v in v3.items() if k != "sha256"}, timeout=60)
    assert r["state"] == "staged" and r["version"] == 3  # replaces the staged v2, in the same slot
    b = slot_b(d)
    assert b["version"] == 3 and b["sha256"] == v3["sha256"] and b["staged"]["version"] == 3
    with pytest.raises(CommandError) as e:  # an older one does not replace it
        d.call("update", {k: v for k, v in rel(2).items() if k != "sha256"}, timeout=60)
    assert e.value.code == "update.downgrade"
    out = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(d.config_path), "switch"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "switched (live): v3 in slot b is on trial" in out.stdout, out.stdout + out.stderr
    assert d.call("status")["model"]["version"] == 3
    wait_until(lambda: d.call("slots")["trial"] is None, 30)
    assert slot_b(d)["status"] == "good"
    # a signed not_before holds an update back even with no window; the command still switches it
    d.call("config.set", {"key": "update.switch_window", "value": []})
    nb = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=6)
    v4 = rel(4, not_before=nb)
    r = d.call("update", {k: v for k, v in v4.items() if k != "sha256"}, timeout=60)
    assert r["state"] == "staged" and r["switch_at"] == r["not_before"] == f"{nb:%Y-%m-%dT%H:%M:%SZ}"
    assert d.call("switch")["version"] == 4 and d.call("status")["model"]["version"] == 4
