"""sd_notify over a real datagram socket, and silence outside systemd."""

from __future__ import annotations

import socket

import pytest

from edgeagent.service.sdnotify import Notifier


def test_plain_socket_protocol(tmp_path):
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"}, use_library=False)
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
    n = Notifier({"NOTIFY_SOCKET": "@" + name}, use_library=False)
    assert n.stopping()
    assert srv.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    srv.close()


def test_outside_systemd_does_nothing_and_never_raises(tmp_path):
    assert Notifier({}).ready("x") is False
    # a socket path that does not exist: no exception, just False
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}, use_library=False).ready("x") is False
    # a watchdog meant for another pid is not ours
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None


def test_systemd_python_path_when_the_extra_is_installed(tmp_path, monkeypatch):
    pytest.importorskip("systemd.daemon", reason="the [systemd] extra is not installed here")
    path = str(tmp_path / "lib.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    assert n._lib is not None and n.ready("via libsystemd")
    assert srv.recv(4096) == b"READY=1\nSTATUS=via libsystemd"
    srv.close()
