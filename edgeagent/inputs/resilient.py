"""Keeps any source alive: a failure is reported once, retried with capped backoff, and the
recovery is reported once. The inference loop never blocks on a dead camera: while the source
is down, read() raises SourceError at once (the loop counts it and waits a little)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from edgeagent.errors import SourceError

log = logging.getLogger("edgeagent.inputs")

OnState = Callable[[str, dict], None]


class ResilientSource:
    def __init__(self, inner: Any, on_state: OnState | None = None, backoff_min: float = 0.5,
                 backoff_max: float = 30.0) -> None:
        self.inner = inner
        self.name = inner.name
        self._on_state = on_state or (lambda name, fields: None)
        self._min, self._max = backoff_min, backoff_max
        self._down: SourceError | None = None
        self._delay = backoff_min
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.failures = 0

    @property
    def dropped(self) -> int | None:
        """Samples the inner source skipped to stay current (live sensor streams), else None."""
        return getattr(self.inner, "dropped", None)

    @property
    def healthy(self) -> bool:
        return self._down is None

    def open(self) -> None:
        try:
            self.inner.open()
        except SourceError as e:
            self._fail(e)

    def read(self) -> np.ndarray:
        if self._down is not None:
            if time.monotonic() < self._retry_at:
                raise self._down
            try:
                self.inner.close()
                self.inner.open()
            except SourceError as e:
                self._fail(e)
                raise
            except Exception as e:  # noqa: BLE001
                err = SourceError("input.open_failed", f"{type(e).__name__}: {e}")
                self._fail(err)
                raise err from None
        try:
            frame = self.inner.read()
        except SourceError as e:
            self._fail(e)
            raise
        except Exception as e:  # noqa: BLE001 - a driver bug is a failed read, not a dead loop
            err = SourceError("input.read_failed", f"{type(e).__name__}: {e}")
            self._fail(err)
            raise err from None
        if self._down is not None:
            down, self._down = self._down, None
            self._delay = self._min
            log.info("input %s recovered", self.name)
            self._on_state("input.recovered", {"source": self.name, "after": down.code})
        return frame

    def _fail(self, e: SourceError) -> None:
        first = self._down is None
        self._down = e
        self.failures += 1
        import random  # on a failure only: not on the way to the first frame

        delay = self._delay * (0.5 + random.random() / 2)  # jitter: a fleet must not retry in step
        self._retry_at = time.monotonic() + delay
        self._delay = min(self._delay * 2, self._max)
        if first:
            log.warning("input %s failed: %s; retrying with backoff", self.name, e)
            self._on_state("input.failed", {"source": self.name, "code": e.code, "message": e.message,
                                            "retry_in_s": round(delay, 2)})

    def close(self) -> None:
        try:
            self.inner.close()
        except Exception:  # noqa: BLE001
            pass
