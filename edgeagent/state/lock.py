"""The state lock: an exclusive flock on state_dir/lock around every state transition.

The daemon takes it only for the few milliseconds of a transition, never for its whole life, so
the offline CLI still works when no daemon runs and never writes at the same instant as a
running one. (Whether a daemon runs is asked of the control socket, not of this lock.)
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from edgeagent.errors import StateError


class StateLock:
    def __init__(self, state_dir: str | os.PathLike, timeout: float = 10.0) -> None:
        self.path = Path(state_dir) / "lock"
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0
        self._thread_lock = threading.RLock()  # flock is per open file: serialise our own threads too

    def acquire(self, timeout: float | None = None) -> None:
        self._thread_lock.acquire()
        if self._depth:
            self._depth += 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    self._thread_lock.release()
                    raise StateError("state.locked", f"{self.path}: another edgeagent process holds the state lock") from None
                time.sleep(0.02)
        self._fd = fd
        self._depth = 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._thread_lock.release()

    def __enter__(self) -> "StateLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class DaemonLock:
    """One daemon per state directory: an exclusive flock on state_dir/daemon.lock, held for the
    daemon's whole life (the kernel releases it when the process dies, however it dies). A second
    daemon on the same state, whatever its control socket, stops before it touches state.json."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.path = Path(state_dir) / "daemon.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise StateError("state.in_use", f"{self.path.parent}: another edgeagent daemon (pid {holder}) "
                                             f"serves this state directory") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message a second daemon prints
        except OSError:
            pass  # a full disk: the lock holds all the same
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
