"""Run the real daemon (`python -m edgeagent run`) as a child process for end-to-end tests.

Readiness comes the way systemd learns it: the test binds a datagram socket, passes it as
NOTIFY_SOCKET and waits for READY=1. Commands go over the real control socket.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.support import tomlw

REPO = Path(__file__).resolve().parents[2]
_SEQ = itertools.count(1)
_SHORT_DIR: list[str] = []


def _short_path(path: Path) -> str:
    """A socket path that fits AF_UNIX's 107 bytes: pytest-xdist's per-worker temporary folders
    can push a test's own folder past it, so long paths move to one short private folder."""
    if len(str(path)) <= 100:
        return str(path)
    if not _SHORT_DIR:
        _SHORT_DIR.append(tempfile.mkdtemp(prefix="ea-"))
        atexit.register(shutil.rmtree, _SHORT_DIR[0], True)
    return os.path.join(_SHORT_DIR[0], path.name)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def base_config(tmp: Path, model_file: Path, **over: Any) -> dict:
    cfg = {
        "device": {"id": "test-dev"},
        "model": {"name": "testmodel", "state_dir": str(tmp / "state"), "initial": str(model_file)},
        "input": {"source": "synthetic", "rate_hz": 20.0},  # 1.2% of a core idle, 2.5% at 50 Hz
        "telemetry": {"interval_s": 0.5, "sysfs_root": str(tmp / "nosys"), "power_profile": "none"},
        "control": {"socket": str(tmp / "control.sock")},
        "update": {"probation_s": 1.0, "min_inferences": 5},
    }
    return deep_merge(cfg, over)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(tomlw.dumps(cfg))
    return path


class Daemon:
    def __init__(self, tmp: Path, cfg: dict, name: str = "daemon") -> None:
        self.tmp = tmp
        self.cfg = cfg
        self.config_path = write_config(tmp / f"{name}.toml", cfg)
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.notify: socket.socket | None = None
        self.messages: list[str] = []
        self.last_watchdog = 0.0
        self.ready_at = 0.0  # when READY=1 arrived: systemd arms WatchdogSec= then, not at the spawn

    @property
    def socket_path(self) -> str:
        return self.cfg["control"]["socket"]

    def start(self, wait_ready: bool = True, timeout: float = 60.0, env: dict | None = None) -> "Daemon":
        since = len(self.messages)  # this run's datagrams (a restarted Daemon keeps the last run's)
        self.last_watchdog = self.ready_at = 0.0
        notify_path = _short_path(self.tmp / f"notify-{next(_SEQ)}.sock")
        if os.path.exists(notify_path):
            os.unlink(notify_path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        self.notify.settimeout(0.2)
        self._cv = threading.Condition()
        threading.Thread(target=self._read_notify, daemon=True).start()
        e = dict(os.environ, NOTIFY_SOCKET=notify_path, PYTHONUNBUFFERED="1")
        e.pop("WATCHDOG_USEC", None)
        e.update(env or {})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeagent", "-c", str(self.config_path), "run"],
            cwd=REPO, env=e, stdout=self._log, stderr=subprocess.STDOUT,
        )
        if wait_ready:  # READY=1, then the control plane (built after it) answers as a user's script sees it
            self.wait_for("READY=1", timeout, since=since)
            self.call("status", timeout=timeout)
        return self

    def _read_notify(self) -> None:
        """Read sd_notify datagrams as systemd does, all the time."""
        sock = self.notify
        while sock is not None and sock.fileno() >= 0:
            try:
                msg = sock.recv(65536).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cv:
                self.messages.append(msg)
                if "WATCHDOG=1" in msg:
                    self.last_watchdog = time.monotonic()
                if "READY=1" in msg and not self.ready_at:
                    self.ready_at = time.monotonic()
                self._cv.notify_all()

    def wait_for(self, needle: str, timeout: float = 30.0, since: int = 0) -> str:
        """Wait for an sd_notify datagram containing `needle` (among those from number `since` on)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for m in self.messages[since:]:
                    if needle in m:
                        return m
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {needle!r} from the daemon in {timeout} s:\n{self.log()}")
                self._cv.wait(min(left, 0.2))

    def wait_for_closed_messages(self) -> str:
        """Datagrams that arrived until the daemon exited (after stop())."""
        return "\n".join(self.messages)

    def call(self, op: str, args: dict | None = None, timeout: float = 30.0) -> Any:
        from edgeagent.control.client import ControlClient

        with ControlClient(self.socket_path, timeout=timeout) as c:
            return c.call(op, args or {}, timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
                time.sleep(0.05)
            except subprocess.TimeoutExpired:
                # a daemon that ignores the signal: every thread's stack into its log (faulthandler
                # on SIGUSR1), then shown with the failing test, then the kill
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                print(f"daemon did not stop within {timeout} s of {signal.Signals(sig).name}:\n{self.log()}",
                      file=sys.stderr)
                self.proc.kill()
                self.proc.wait(5)
        self.close()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.close()

    def close(self) -> None:
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        if getattr(self, "_log", None):
            self._log.close()


class Supervisor:
    """Runs the daemon the way systemd runs edgeagent.service: Type=notify, WatchdogSec (a
    missed ping gets SIGABRT, then SIGKILL, as systemd does), Restart=on-failure with
    RestartSec, and a start limit. `starts` records why each run ended."""

    def __init__(self, tmp: Path, cfg: dict, *, watchdog_s: float = 4.0, restart_s: float = 0.2,
                 max_starts: int = 12) -> None:
        self.tmp = tmp
        self.cfg = cfg
        self.watchdog_s = watchdog_s
        self.restart_s = restart_s
        self.max_starts = max_starts
        self.starts: list[dict] = []  # {"n", "exit", "why"}
        self.daemon: Daemon | None = None
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._thread: threading.Thread | None = None

    def restart(self) -> None:
        """`systemctl restart`: a clean stop (SIGTERM), then a new start."""
        assert self.daemon is not None
        self._restart.set()
        self.daemon.proc.send_signal(signal.SIGTERM)

    def start(self) -> "Supervisor":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.starts) < self.max_starts:
            n = len(self.starts) + 1
            d = Daemon(self.tmp, self.cfg, name=f"run{n}")
            d.start(wait_ready=False, env={"WATCHDOG_USEC": str(int(self.watchdog_s * 1e6))})
            self.daemon = d
            rec = {"n": n, "exit": None, "why": None}
            self.starts.append(rec)
            while not self._stop.is_set():
                code = d.proc.poll()
                if code is not None:
                    rec.update(exit=code, why="exited")
                    break
                # "The watchdog is activated when the start-up is completed" (systemd.service):
                # a start slowed by a busy machine is TimeoutStartSec='s business, not the watchdog's
                last = d.last_watchdog or d.ready_at
                if last and time.monotonic() - last > self.watchdog_s:
                    d.proc.send_signal(signal.SIGABRT)  # systemd: watchdog timeout
                    try:
                        d.proc.wait(2)
                    except subprocess.TimeoutExpired:
                        d.proc.kill()
                        d.proc.wait(5)
                    rec.update(exit=d.proc.returncode, why="watchdog")
                    break
                time.sleep(0.05)
            d.close()
            if self._stop.is_set() or (rec["exit"] == 0 and not self._restart.is_set()):
                return  # Restart=on-failure: a clean exit stays down
            self._restart.clear()
            time.sleep(self.restart_s)

    def call(self, op: str, args: dict | None = None, timeout: float = 30.0) -> Any:
        assert self.daemon is not None
        return self.daemon.call(op, args, timeout)

    def wait_ready(self, after_start: int, timeout: float = 60.0) -> Daemon:
        """Wait until run number >= after_start is up (READY=1)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.daemon
            if d is not None and len(self.starts) >= after_start and d.ready_at \
                    and d.proc.poll() is None:
                return d
            time.sleep(0.05)
        raise AssertionError(f"no ready daemon after start {after_start}: {self.starts}\n"
                             f"{self.daemon.log() if self.daemon else ''}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        if self.daemon is not None and self.daemon.proc is not None and self.daemon.proc.poll() is None:
            self.daemon.stop()
