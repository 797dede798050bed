"""`make demo` end to end, and `edgeagent top` in a real terminal (tmux) and in a pipe."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.long(seconds=25)

REPO = Path(__file__).resolve().parents[2]


def test_make_demo_passes_and_reads_well():
    r = subprocess.run([sys.executable, "scripts/demo.py"], cwd=REPO, capture_output=True, text=True, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for step in range(1, 10):
        assert f"[{step}/9]" in out
    for needle in ("update.committed", "rolled back (live)", "update.rolled_back: probation.nonfinite: non-finite outputs",
                   "marked bad", "demo OK"):
        assert needle in out, needle
    assert "Traceback" not in out and "DEBUG" not in out
    assert max(len(l) for l in out.splitlines()) < 140


def test_top_plain_mode_in_a_pipe(start_daemon):
    d = start_daemon()
    time.sleep(1.0)
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(d.config_path), "top", "--count", "2",
                        "--interval", "0.5"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "test-dev testmodel v1 slot a fps" in lines[-1] and "p50" in lines[-1]


def test_top_in_a_real_terminal(start_daemon, tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is required (apt-get install tmux; .ci/run installs it)")
    d = start_daemon()
    session = f"eatop{id(d) % 100000}"
    cmd = f"{sys.executable} -m edgeagent -c {d.config_path} top --interval 0.5"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "40", "-c", str(REPO), cmd], check=True)
    try:
        screen = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.5)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
            if "latency ms" in screen and "fps" in screen and "model.loaded" in screen:
                break
        assert "edgeagent top" in screen and "testmodel v1" in screen and "slot a" in screen, screen
        assert "latency ms" in screen and "p99" in screen and "events:" in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)  # q quits (issue 20, point 7)
        deadline = time.monotonic() + 5
        alive = True
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0
        pane = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
        assert not alive, pane
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
