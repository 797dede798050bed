"""A cancellation token for one update: set by the `cancel` op (or a `rollback`), checked by
every step, and able to interrupt what blocks (a socket read, the health child).

Each blocking step registers a hook while it blocks (close the socket, kill the child), so a
cancel takes effect in well under a second whatever phase the update is in.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable, Iterator

from edgeagent.update.errors import UpdateRejected

log = logging.getLogger("edgeagent.update")


class Cancel:
    def __init__(self) -> None:
        self._ev = threading.Event()
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self.reason = ""

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self._ev.is_set():
                return
            self.reason = reason
            self._ev.set()
            hooks = list(self._hooks)
        for fn in hooks:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - interrupting is best effort; check() still stops it
                log.debug("cancel hook failed: %s", e)

    @property
    def is_set(self) -> bool:
        return self._ev.is_set()

    def check(self) -> None:
        if self._ev.is_set():
            raise UpdateRejected("update.cancelled", self.reason or "cancelled")

    def wait(self, seconds: float) -> bool:
        return self._ev.wait(seconds)

    @contextlib.contextmanager
    def hook(self, fn: Callable[[], None]) -> Iterator[None]:
        """Run fn if a cancel comes while the block runs (and at once if it already came)."""
        with self._lock:
            self._hooks.append(fn)
            already = self._ev.is_set()
        if already:
            fn()
        try:
            yield
        finally:
            with self._lock:
                self._hooks.remove(fn)


NEVER = Cancel()  # for callers with nothing to cancel (the offline install CLI)
