"""Phased rollouts end to end: three bridged mosquitto brokers, twelve real daemons, the real CLI.

The topology is a site broker per rack bridged to a central one (`edgeagent/#` both ways), four
devices on each broker and the controller on a leaf, so its document and the devices' results
cross two bridges. One good rollout in three steps is driven through a controller that is
killed and resumed, a leaf broker that is killed and restarted, and a device that is stopped
before its step and started after it; then a rollout whose model fails the health check must
halt after its first step with nothing else touched.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeagent.engine import testmodels
from edgeagent.fleet.rollout_doc import bucket, percentage_for
from edgeagent.update.keys import generate_keypair
from edgeagent.update.release import make_release
from tests.support.broker import Broker
from tests.support.daemon import Daemon, base_config

pytestmark = pytest.mark.long(seconds=45)

REPO = Path(__file__).resolve().parents[2]
N = 12
GROUP = "fleet"
DEVICES = [f"dev{i:02d}" for i in range(1, N + 1)]


def cli(*args: str, env: dict, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeagent", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)


def popen(*args: str, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeagent", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env, cwd=REPO)


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def wait_log(d: Daemon, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in d.log():
        assert time.monotonic() < deadline, f"no {needle!r} in {timeout} s:\n{d.log()[-3000:]}"
        time.sleep(0.1)


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hub = Broker(tmp / "hub").start()
        self.leaf1 = Broker(tmp / "leaf1", bridge_to=[self.hub.port]).start()
        self.leaf2 = Broker(tmp / "leaf2", bridge_to=[self.hub.port]).start()
        self.brokers = [self.hub, self.leaf1, self.leaf2]
        generate_keypair(tmp / "keys")
        self.www = tmp / "www"
        self.www.mkdir()
        handler = functools.partial(Quiet, directory=str(self.www))
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.v1 = testmodels.write_model(tmp / "v1.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1)
        self.env = dict(os.environ, XDG_STATE_HOME=str(tmp / "controller-state"), PYTHONUNBUFFERED="1")
        self.daemons: dict[str, Daemon] = {}
        self.broker_of: dict[str, Broker] = {}
        for i, dev in enumerate(DEVICES):
            b = self.brokers[i % 3]
            d_tmp = tmp / dev
            d_tmp.mkdir()
            cfg = base_config(d_tmp, self.v1, device={"id": dev, "groups": [GROUP]},
                              mqtt={"host": "127.0.0.1", "port": b.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                              input={"source": "synthetic", "rate_hz": 10.0},
                              telemetry={"interval_s": 1.0, "sysfs_root": str(d_tmp / "nosys"), "power_profile": "none"},
                              update={"trusted_keys": [str(tmp / "keys" / "edgeagent.pub")], "probation_s": 1.0,
                                      "min_inferences": 5})
            self.daemons[dev] = Daemon(d_tmp, cfg, name=dev)
            self.broker_of[dev] = b
        for d in self.daemons.values():
            d.start(wait_ready=False)
        for d in self.daemons.values():
            d.wait_for("READY=1", timeout=60)
            wait_log(d, "mqtt: connected")

    def release(self, version: int, base: Path, **kw) -> tuple[Path, str, Path]:
        target = testmodels.write_model(self.tmp / f"v{version}.tflite", kind="dense", input_shape=(1, 16), outputs=4,
                                        seed=1, version_tag=version, **kw)
        rel = make_release(keys=[str(self.tmp / "keys" / "edgeagent.key")], target=target, base=base,
                           model="testmodel", version=version, out_dir=self.www / f"v{version}")
        payload = Path(rel["payload"])
        return Path(rel["manifest"]), f"http://127.0.0.1:{self.http.server_port}/v{version}/{payload.name}", target

    def broker_arg(self, b: Broker) -> str:
        return f"127.0.0.1:{b.port}"

    def state(self, dev: str) -> dict:
        return json.loads((self.tmp / dev / "state" / "state.json").read_text())

    def serving(self, dev: str) -> int:
        st = self.state(dev)
        return st["slots"][st["active"]]["version"]

    def events(self, dev: str) -> list[dict]:
        """Every event the device logged (the journal's view of it)."""
        out = []
        for line in self.daemons[dev].log().splitlines():
            if " event " in line:
                out.append(line)
        return out

    def close(self) -> None:
        for d in self.daemons.values():
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
        self.http.shutdown()
        for b in self.brokers:
            b.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    yield f
    f.close()


def status(fleet: Fleet, rid: str, broker: Broker, missing_ok: bool = False) -> dict | None:
    r = cli("rollout", "status", rid, "--broker", fleet.broker_arg(broker), "--json", env=fleet.env)
    if missing_ok and r.returncode == 1 and "rollout.not_found" in r.stderr:
        return None
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_status(fleet: Fleet, rid: str, broker: Broker, pred, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = status(fleet, rid, broker, missing_ok=True)
        if last is not None and pred(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"rollout {rid} never reached the expected state: {json.dumps(last)[:2000]}")


def steps(rid: str, pcts: list[float], at_least: int) -> list[set[str]]:
    """Who the hash puts in each step: what the controller and every device compute."""
    return [{d for d in DEVICES if bucket(rid, d) < percentage_for(rid, DEVICES, p, at_least=at_least)} for p in pcts]


def test_good_rollout_survives_controller_kill_broker_kill_and_a_stopped_device(fleet: Fleet, tmp_path: Path):
    manifest, url, _ = fleet.release(2, base=fleet.v1)
    rid = "good-1"
    plan = steps(rid, [25, 50, 100], at_least=2)
    assert [len(s) for s in plan] == [3, 6, 12]
    late = sorted(plan[2] - plan[1])[0]  # a device of the last step: stopped before the rollout starts
    late_daemon = fleet.daemons[late]
    late_daemon.stop()

    ctl_broker = fleet.leaf2
    ctl = popen("rollout", "start", str(manifest), "--group", GROUP, "--payload-url", url, "--phases", "25,50,100",
                "--min-executed", "2", "--max-failure-pct", "0", "--soak", "1", "--device-timeout", "120",
                "--id", rid, "--broker", fleet.broker_arg(ctl_broker), env=fleet.env, log=tmp_path / "ctl1.log")
    try:
        # step 1 finished and step 2 begun: kill the controller without a word
        wait_status(fleet, rid, ctl_broker, lambda s: s["rollout"]["phase"] >= 1)
        ctl.send_signal(signal.SIGKILL)
        ctl.wait(10)
    finally:
        if ctl.poll() is None:
            ctl.kill()
    first = status(fleet, rid, fleet.hub)
    assert first["rollout"]["state"] == "running"
    touched = {d for d in DEVICES if first["tally"]["devices"]["committed"].count(d)}
    assert plan[0] <= touched | set(first["tally"]["devices"]["in_progress"]) | set(first["tally"]["devices"]["waiting"])

    # a leaf broker dies mid-rollout and comes back: its devices reconnect, the bridge re-forms
    fleet.leaf1.stop()
    time.sleep(2.0)
    fleet.leaf1.start()

    resumed = popen("rollout", "resume", rid, "--broker", fleet.broker_arg(ctl_broker), "--json", env=fleet.env,
                    log=tmp_path / "ctl2.log")
    try:
        wait_status(fleet, rid, ctl_broker, lambda s: s["rollout"]["phase"] == 2, timeout=120)
        assert late_daemon.proc.poll() is not None  # it missed the start of its step
        late_daemon.start(wait_ready=True)  # back: it reads the retained document and takes it
        assert resumed.wait(180) == 0, (tmp_path / "ctl2.log").read_text()[-3000:]
    finally:
        if resumed.poll() is None:
            resumed.kill()
    summary = json.loads((tmp_path / "ctl2.log").read_text()[(tmp_path / "ctl2.log").read_text().index("{"):])
    t = summary["tally"]
    assert summary["rollout"]["state"] == "complete"
    assert (t["committed"], t["refused"], t["rolled_back"], t["timed_out"], t["members"]) == (12, 0, 0, 0, 12), t

    r = cli("fleet", "--broker", fleet.broker_arg(fleet.hub), "--json", "--listen", "2.5", env=fleet.env)
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in json.loads(r.stdout)["devices"]}
    assert sorted(rows) == DEVICES
    for dev, row in rows.items():
        assert (row["state"], row["version"], row["trial"], row["groups"]) == ("online", 2, False, [GROUP]), row
        assert row["rollout"] == {"id": rid, "result": "committed", "version": 2}
        assert row["fps"] is not None
        assert fleet.serving(dev) == 2
    # the live view shows the same fleet
    r = cli("top", "--mqtt", fleet.broker_arg(fleet.leaf1), "--fleet", "--interval", "2", "--count", "1", "--plain",
            env=fleet.env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["DEVICE", "STATE"] and lines[-1] == "12 device(s), 12 online"
    assert sorted(ln.split()[0] for ln in lines[1:-1]) == DEVICES
    assert all(" v2 " in ln and f"{rid}:committed" in ln for ln in lines[1:-1])
    # the tally is not corrupted: each device took the update exactly once, tagged with the rollout
    for dev in DEVICES:
        committed = [ln for ln in fleet.events(dev) if "event update.committed" in ln]
        assert len(committed) == 1, (dev, committed)
    fleet.v2 = Path(manifest).parent  # the next test's base


def test_failing_rollout_halts_after_its_first_step_touching_nothing_else(fleet: Fleet, tmp_path: Path):
    # the fleet serves v2 after the test above (make test runs a file on one worker, in order); alone, v1
    base = fleet.tmp / "v2.tflite" if (fleet.tmp / "v2.tflite").exists() else fleet.v1
    manifest, url, _ = fleet.release(3, base=base, fail_at_invoke=True)
    rid = "bad-1"
    plan = steps(rid, [25, 100], at_least=2)
    before = {d: fleet.state(d) for d in DEVICES}
    r = cli("rollout", "start", str(manifest), "--group", GROUP, "--payload-url", url, "--phases", "25,100",
            "--min-executed", "2", "--max-failure-pct", "0", "--soak", "0", "--device-timeout", "120", "--id", rid,
            "--broker", fleet.broker_arg(fleet.leaf2), "--json", env=fleet.env, timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rollout.halted" in r.stderr
    summary = json.loads(r.stdout)
    assert summary["rollout"]["state"] == "halted" and summary["rollout"]["percentage"] == 0
    assert summary["rollout"]["phase"] == 0
    refused = set(summary["tally"]["devices"]["refused"])
    assert len(refused) >= 2 and refused <= plan[0]
    # the step's last device may still have been checking when the halt came: it refuses too
    s = wait_status(fleet, rid, fleet.hub, lambda s: not s["tally"]["devices"]["in_progress"], timeout=60)
    assert set(s["tally"]["devices"]["refused"]) == plan[0]
    time.sleep(2.0)  # a device outside the step that (wrongly) acted would show by now
    for dev in DEVICES:
        assert fleet.serving(dev) == 2, dev  # nobody serves the bad model
        logged = [ln for ln in fleet.events(dev) if "rollout=bad-1" in ln]
        if dev in plan[0]:
            assert any("update.rejected" in ln and "update.health_failed" in ln for ln in logged), (dev, logged)
        else:
            assert logged == [], (dev, logged)  # untouched
            assert fleet.state(dev) == before[dev], dev
