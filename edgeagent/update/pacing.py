"""A cap on the bytes an update takes per second (`update.max_bytes_per_s`), for metered links.

A token bucket: the rate accrues up to one second of burst; a read that spends more than the
bucket holds waits for the deficit (on the cancel's wait, so a cancel ends it at once). The rate
is read on every call, so `config.set update.max_bytes_per_s` applies to a download under way.
"""

from __future__ import annotations

import time
from typing import Callable

from edgeagent.update.cancel import NEVER, Cancel


class Pacer:
    def __init__(self, rate: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate  # bytes per second; 0 = no cap
        self._clock = clock
        self._tokens = 0.0
        self._at = clock()
        self.bytes = 0  # every byte it was asked to pass

    @property
    def rate(self) -> int:
        return max(0, int(self._rate() or 0))

    def chunk(self, default: int) -> int:
        """A read size that keeps the pace smooth: at most a quarter of a second's worth."""
        r = self.rate
        return default if not r else max(1024, min(default, r // 4))

    def count(self, n: int) -> None:
        """Bytes that arrived without being asked for at a pace (MQTT chunks the publisher pushes)."""
        self.bytes += n

    def take(self, n: int, cancel: Cancel = NEVER) -> None:
        self.bytes += n
        r = self.rate
        now = self._clock()
        if not r:
            self._tokens, self._at = 0.0, now
            return
        self._tokens = min(float(r), self._tokens + (now - self._at) * r) - n
        self._at = now
        if self._tokens < 0:
            if cancel.wait(-self._tokens / r):
                cancel.check()
