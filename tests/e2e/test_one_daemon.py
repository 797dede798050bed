"""One daemon per state directory (issue 19, point 9)."""

from __future__ import annotations

import json
import signal
import time

from tests.support.daemon import Daemon, base_config


def test_a_second_daemon_on_the_same_state_directory_stops_before_touching_it(tmp_path, start_daemon, model_path):
    first = start_daemon()
    state = tmp_path / "state" / "state.json"
    before = state.read_bytes()
    # another control socket, the same state directory: a copy-pasted unit, a manual run beside systemd
    cfg = base_config(tmp_path, model_path, control={"socket": str(tmp_path / "other.sock")})
    second = Daemon(tmp_path, cfg, name="second").start(wait_ready=False)
    assert second.proc.wait(30) == 1
    assert "state.in_use" in second.log() and f"pid {first.proc.pid}" in second.log()
    assert state.read_bytes() == before
    assert first.call("status")["daemon"] == "running"
    # and the lock goes with the process, however it ends
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    third = Daemon(tmp_path, cfg, name="third").start()
    assert third.call("ping")["pong"] is True
    assert json.loads(state.read_text())["active"] == "a"
    third.stop()


def test_a_hung_daemon_keeps_its_control_socket(tmp_path, start_daemon, model_path):
    """A probe that times out means the socket is in use, not stale: a daemon frozen with a full
    backlog keeps it, and the second stops on the socket (or the state lock) without unlinking it."""
    first = start_daemon()
    sock = tmp_path / "control.sock"
    import socket as _s

    fillers = []
    first.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(40):  # fill the listen backlog of the frozen daemon
            c = _s.socket(_s.AF_UNIX, _s.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(str(sock))
            except (BlockingIOError, OSError):
                pass
            fillers.append(c)
        cfg = base_config(tmp_path / "elsewhere", model_path, control={"socket": str(sock)})
        second = Daemon(tmp_path, cfg, name="second").start(wait_ready=False)
        assert second.proc.wait(30) == 1
        assert "control.in_use" in second.log()
        assert sock.exists()
    finally:
        first.proc.send_signal(signal.SIGCONT)
        for c in fillers:
            c.close()
    deadline = time.monotonic() + 20  # the woken daemon drains the dead connections first
    while True:
        try:
            assert first.call("ping")["pong"] is True
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
