"""sd_notify over a non-blocking datagram socket.

Like gunicorn's systemd.py: outside systemd (no NOTIFY_SOCKET) every call does nothing, and no
call ever raises - a notification is advice to the service manager, never a reason to crash the
daemon. The protocol is one datagram of newline-separated ``KEY=VALUE`` lines to the AF_UNIX
socket named by $NOTIFY_SOCKET (a leading '@' means the abstract namespace).

Not systemd-python's ``daemon.notify``, even where the [systemd] extra is installed (it is there
for journald logging): that call blocks in sendmsg with the GIL held when the manager's queue is
full, which froze every thread of the daemon, the inference loop included. Here a notification
that does not fit is dropped: the next STATUS or WATCHDOG=1 follows within seconds.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("edgeagent.sdnotify")


class Notifier:
    def __init__(self, env: dict | None = None) -> None:
        env = os.environ if env is None else env
        self._addr = env.get("NOTIFY_SOCKET") or ""
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def notify(self, **fields: object) -> bool:
        """Send e.g. notify(READY=1, STATUS="serving"); True if it was sent."""
        if not self._addr:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items())
        try:
            if self._sock is None:
                # non-blocking: a service manager that does not read must not stall the daemon
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            addr = self._addr
            if addr.startswith("@"):
                addr = "\0" + addr[1:]
            self._sock.sendto(msg.encode("utf-8", "replace"), addr)
            return True
        except Exception as e:  # noqa: BLE001 - never raise from a notification
            log.debug("sd_notify failed: %s", e)
            return False

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def extend_timeout(self, seconds: float, status: str) -> bool:
        """Ask systemd for `seconds` more of start-up (or stop) time from now, before long work
        (seeding a large model, resuming a patch): TimeoutStartSec stays short for the common
        case and a slow SD card does not get the service killed half-way."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1e6), STATUS=status)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
