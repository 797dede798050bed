"""The daemon as systemd runs it: readiness, watchdog, signals, status, bad config, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeagent.engine import testmodels
from edgeagent.errors import EdgeAgentError

pytestmark = pytest.mark.long(seconds=25)

REPO = Path(__file__).resolve().parents[2]


def cli(d, *args, check=True):
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(d.config_path), *args],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_ready_status_and_clean_stop(start_daemon):
    d = start_daemon()
    ready = d.wait_for("READY=1")
    assert "STATUS=serving testmodel v1 slot a" in ready
    # more start-up time was asked for before the slots were checked (seeding can be long)
    first = d.messages[0]
    assert first.startswith("EXTEND_TIMEOUT_USEC=") and int(first.split("\n")[0].split("=")[1]) >= 60_000_000
    st = json.loads(cli(d, "status", "--json").stdout)
    assert st["daemon"] == "running"
    assert st["model"]["name"] == "testmodel" and st["model"]["version"] == 1 and st["model"]["slot"] == "a"
    assert len(st["model"]["sha256"]) == 64 and st["trial"] is None
    time.sleep(1.2)
    st = json.loads(cli(d, "status", "--json").stdout)
    assert st["telemetry"]["inference"]["count"] > 10  # 50 Hz for > 1 s
    t0 = time.monotonic()
    assert d.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 5
    assert any("STOPPING=1" in m for m in d.messages) or "STOPPING=1" in d.wait_for_closed_messages()


_GC_WATCH = """
import gc, os, threading, time

def _watch():  # every change of the cyclic GC's state, from the interpreter's start on
    last, changes, t0 = None, 0, time.monotonic()
    while changes < 3 and time.monotonic() - t0 < 60:
        if gc.isenabled() != last:
            last, changes = gc.isenabled(), changes + 1
            with open(os.environ["EA_GC_LOG"], "a") as f:
                f.write(f"{int(last)}\\n")
        time.sleep(0.001)

threading.Thread(target=_watch, daemon=True).start()
"""


def test_the_cyclic_gc_is_off_while_the_daemon_starts_and_on_once_it_serves(start_daemon, tmp_path):
    """The start runs without the cyclic GC (its objects all live on: 11 ms of a start); a daemon
    left without it for good would keep every reference cycle it makes for months."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_GC_WATCH)
    log = tmp_path / "gc.log"
    d = start_daemon(env={"PYTHONPATH": str(tmp_path / "site"), "EA_GC_LOG": str(log)})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and log.read_text().split() != ["1", "0", "1"]:
        time.sleep(0.05)
    assert log.read_text().split() == ["1", "0", "1"]  # on at the interpreter's start, off, on again
    assert d.call("status")["daemon"] == "running"


def test_sigint_also_stops_cleanly(start_daemon):
    d = start_daemon()
    t0 = time.monotonic()
    assert d.stop(signal.SIGINT) == 0
    assert time.monotonic() - t0 < 5


def test_status_offline_reads_the_state_dir(start_daemon):
    d = start_daemon()
    d.stop()
    st = json.loads(cli(d, "status", "--json").stdout)
    assert st["daemon"] == "stopped" and st["model"]["version"] == 1
    assert "not running" in cli(d, "status").stdout or "stopped" in cli(d, "status").stdout


def _drain(d, seconds):
    time.sleep(seconds)  # the helper reads the notify socket in the background, as systemd does


def test_watchdog_pings_follow_the_inference_loop(start_daemon, tmp_path):
    # a healthy loop: WATCHDOG=1 keeps coming
    d = start_daemon(env={"WATCHDOG_USEC": "400000"}, name="healthy")
    d.messages.clear()
    _drain(d, 1.5)
    assert sum("WATCHDOG=1" in m for m in d.messages) >= 5
    d.stop()
    # a model stuck inside invoke (a WHILE loop of 2e9 steps): no READY, no pings
    hung = testmodels.write_model(tmp_path / "hung.tflite", hang=True)
    s = start_daemon(env={"WATCHDOG_USEC": "400000"}, name="hung", model_file=hung,
                     model={"state_dir": str(tmp_path / "state-hung")}, wait_ready=False)
    _drain(s, 2.5)
    assert not any("WATCHDOG=1" in m or "READY=1" in m for m in s.messages), s.messages
    t0 = time.monotonic()
    assert s.stop() == 0  # SIGTERM still stops it, hung interpreter or not
    assert time.monotonic() - t0 < 5


def test_config_error_exit_2_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[input]\nsource = "webcam"\n')
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(bad), "run"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "input.source" in r.stderr and "Traceback" not in r.stderr


def test_a_missing_initial_model_is_a_configuration_error(tmp_path):
    """Exit 2, which the unit's RestartPreventExitStatus=2 keeps systemd from retrying forever."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\ninitial = "{tmp_path}/nope.tflite"\nstate_dir = "{tmp_path}/state"\n'
                   f'[control]\nsocket = "{tmp_path}/ctl.sock"\n')
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(cfg), "run"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        f"edgeagent: state.no_model: model.initial {tmp_path}/nope.tflite: no such file"
    assert "Traceback" not in r.stderr


def test_missing_camera_is_retried_and_the_daemon_keeps_running(start_daemon, tmp_path):
    d = start_daemon(input={"source": "camera", "camera": {"device": str(tmp_path / "unplugged.avi")}})
    st = d.call("status")
    assert st["daemon"] == "running"
    names = [e["event"] for e in st["events"]]
    assert "input.failed" in names
    assert d.call("ping")["pong"] is True


def test_runtime_config_set_changes_the_rate(start_daemon):
    d = start_daemon(input={"rate_hz": 50.0})
    r = d.call("config.set", {"key": "input.rate_hz", "value": 5})
    assert r["value"] == 5.0 and r["previous"] == 50.0
    assert d.call("config.get", {"key": "input.rate_hz"})["value"] == 5.0
    from edgeagent.errors import CommandError

    with pytest.raises(CommandError) as ei:
        d.call("config.set", {"key": "model.backend", "value": "tflite"})
    assert ei.value.code == "config.not_tunable"
    time.sleep(0.6)  # the first telemetry window after the change
    c0 = d.call("status")["telemetry"]["inference"]["count"]
    time.sleep(1.5)
    c1 = d.call("status")["telemetry"]["inference"]["count"]
    assert c1 - c0 <= 12  # ~5 Hz now, not 50


def test_control_socket_is_0660_and_a_second_daemon_refuses(start_daemon, tmp_path):
    d = start_daemon()
    assert (Path(d.socket_path).stat().st_mode & 0o777) == 0o660
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(d.config_path), "run"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1 and "control.in_use" in r.stderr
    assert d.call("ping")["pong"]


def test_the_control_plane_does_not_wait_for_a_late_first_frame(start_daemon, tmp_path):
    """READY=1 waits for the first frame and the control plane is built after it, but not more than
    a quarter second after the loop started: a daemon whose sensor has not sent a sample yet (or
    whose model takes long over its first invoke) already answers status, and would hear a
    rollback."""
    fifo = tmp_path / "imu.fifo"
    os.mkfifo(fifo)
    writer: list[int] = []
    opener = threading.Thread(target=lambda: writer.append(os.open(fifo, os.O_WRONLY)))
    opener.start()
    d = start_daemon(wait_ready=False, input={"source": "sensor", "rate_hz": 50.0,
                                              "sensor": {"mode": "stream", "stream": str(fifo)}})

    def answered():
        try:
            return d.call("status", timeout=5)
        except (OSError, EdgeAgentError):
            return None

    deadline = time.monotonic() + 30
    while (st := answered()) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any("READY=1" in m for m in d.messages), d.messages  # no sample yet: not ready
    assert st["model"]["version"] == 1 and st["daemon"] == "running"
    opener.join(10)
    for _ in range(4):
        os.write(writer[0], (",".join(["0.5"] * 16) + "\n").encode())
    d.wait_for("READY=1", 30)
    assert "(input down)" not in "".join(m for m in d.messages if "READY=1" in m)
    os.close(writer[0])
