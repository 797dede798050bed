"""A child process made with fork(), read like a subprocess.Popen (communicate, kill, returncode).

Why fork at all: the health check's child normally starts a fresh Python (exec), which on a Pi
spends most of its time importing numpy again. At a daemon's first start nothing is running yet
but the control socket's thread, numpy is already imported and no interpreter exists, so a fork
is both safe and about 0.3 s (here; seconds on a Pi Zero) sooner. Once the inference loop runs
(an update), a fork would copy an interpreter in the middle of an invoke: those checks exec.

The child runs `body`, which returns the bytes for its stdout; its stderr (fd 2, where the
interpreter's C code writes) goes to a pipe the parent reads, as with Popen. Whatever happens
in the child ends in os._exit: it never returns into the daemon's code.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import time
import traceback
from typing import Callable


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL when the daemon dies (even by SIGKILL), so no orphan keeps a core busy."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's timeout still ends us
        return
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)


def lower_priority(nice: int) -> None:
    """A guest on a device that serves: nice, and SCHED_BATCH (CPU-bound, never preempts)."""
    try:
        os.nice(nice)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):
        pass


class ForkedChild:
    def __init__(self, body: Callable[[], bytes], nice: int | None = None) -> None:
        """nice: lower the child's priority (lower_priority). The child dies with this process."""
        parent = os.getpid()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            code = 1
            try:
                os.close(out_r)
                os.close(err_r)
                os.dup2(err_w, 2)
                for fd in map(int, os.listdir("/proc/self/fd")):  # the daemon's sockets and its lock stay the
                    if fd > 2 and fd != out_w:  # daemon's: a client sees its connection close, a second
                        try:  # daemon finds the lock free the moment this one exits
                            os.close(fd)
                        except OSError:
                            pass
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)  # not the daemon's queueing handlers
                if nice is not None:
                    lower_priority(nice)
                die_with_parent(parent)
                data = body()
                while data:
                    data = data[os.write(out_w, data):]
                code = 0
            except BaseException:  # noqa: BLE001 - the last line of stderr says why
                os.write(2, traceback.format_exc().encode(errors="replace")[-2000:])
            finally:
                os._exit(code)
        os.close(out_w)
        os.close(err_w)
        self._out, self._err = out_r, err_r
        self._bufs = {out_r: bytearray(), err_r: bytearray()}
        self._open = [out_r, err_r]  # until their end of file
        self.returncode: int | None = None

    def communicate(self, input: bytes | None = None, timeout: float | None = None) -> tuple[bytes, bytes]:
        """Both pipes to their end, then the exit status; subprocess.TimeoutExpired as Popen."""
        end = None if timeout is None else time.monotonic() + timeout
        while self._open:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(["fork"], timeout or 0)
            ready, _, _ = select.select(self._open, [], [], left)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    self._bufs[fd] += chunk
                else:
                    os.close(fd)
                    self._open.remove(fd)
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return bytes(self._bufs[self._out]), bytes(self._bufs[self._err])

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
