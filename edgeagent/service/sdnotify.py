"""sd_notify without a hard dependency on systemd-python.

Like gunicorn's systemd.py: outside systemd (no NOTIFY_SOCKET) every call does nothing, and no
call ever raises - a notification is advice to the service manager, never a reason to crash the
daemon. With systemd-python installed we use its ``daemon.notify``; otherwise we speak the
protocol ourselves: one datagram of newline-separated ``KEY=VALUE`` lines to the AF_UNIX socket
named by $NOTIFY_SOCKET (a leading '@' means the abstract namespace).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("edgeagent.sdnotify")

try:  # optional extra: edgeagent[systemd]
    from systemd import daemon as _sd_daemon  # type: ignore
except Exception:  # noqa: BLE001 - any import problem means "not available"
    _sd_daemon = None


class Notifier:
    def __init__(self, env: dict | None = None, use_library: bool = True) -> None:
        env = os.environ if env is None else env
        self._addr = env.get("NOTIFY_SOCKET") or ""
        self._lib = _sd_daemon if (use_library and self._addr) else None
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
            if self._lib is not None:
                return bool(self._lib.notify(msg))
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
