"""sd_notify over a real datagram socket, and silence outside systemd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from edgeagent.service.sdnotify import Notifier

REPO = Path(__file__).resolve().parents[2]


def test_plain_socket_protocol(tmp_path):
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert n.enabled and n.watchdog_s == 3.0
    assert n.ready("serving m v1")
    assert srv.recv(4096) == b"READY=1\nSTATUS=serving m v1"
    assert n.watchdog()
    assert srv.recv(4096) == b"WATCHDOG=1"
    n.close()
    srv.close()


def test_abstract_namespace_socket():
    name = f"edgeagent-test-{id(object())}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind("\0" + name)
    srv.settimeout(2)
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert n.stopping()
    assert srv.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    srv.close()


def test_outside_systemd_does_nothing_and_never_raises(tmp_path):
    assert Notifier({}).ready("x") is False
    # a socket path that does not exist: no exception, just False
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready("x") is False
    # a watchdog meant for another pid is not ours
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None


_UNREAD = r"""
import sys, threading
sys.path.insert(0, sys.argv[2])
from edgeagent.service.sdnotify import Notifier

n = Notifier()  # NOTIFY_SOCKET from the environment, as under systemd
sent = []

def spam():
    for i in range(3000):
        sent.append(n.status(f"frame {i}"))

t = threading.Thread(target=spam, daemon=True)
t.start()
t.join(15)
print("stuck" if t.is_alive() else "done", sum(sent), len(sent))
"""


def test_a_manager_that_does_not_read_never_stalls_the_daemon(tmp_path):
    """With systemd-python installed too: its notify() blocks in sendmsg with the GIL held once
    the socket's queue is full, and every thread of the daemon (the inference loop included)
    froze with it. A notification that does not fit is dropped instead."""
    path = str(tmp_path / "unread.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)  # and never read while the child sends
    r = subprocess.run([sys.executable, "-c", _UNREAD, path, str(REPO)], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, NOTIFY_SOCKET=path))
    assert r.returncode == 0, r.stderr
    state, delivered, tried = r.stdout.split()
    assert state == "done" and int(tried) == 3000
    assert 0 < int(delivered) < 3000  # the queue filled: the rest were dropped, not waited for
    srv.settimeout(1)
    assert srv.recv(4096) == b"STATUS=frame 0"  # what fitted arrived in order
    srv.close()
