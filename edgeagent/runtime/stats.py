"""Rolling latency statistics with a bounded memory and no per-frame allocation.

The loop writes one row per frame into a preallocated ring; percentiles are computed only when
someone asks (telemetry every few seconds, `status`), over the frames since the previous window
was taken, capped at the ring size. So the per-frame cost is four float stores.
"""

from __future__ import annotations

import threading
import time

import numpy as np

STAGES = ("total", "preprocess", "invoke", "postprocess")


def _summary(col: np.ndarray) -> dict:
    if col.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p95, p99 = np.percentile(col, (50, 95, 99))
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(col.max()), 3),
        "mean": round(float(col.mean()), 3),
    }


class LatencyWindow:
    """Per-stage latencies (ms) of the last `capacity` frames."""

    def __init__(self, capacity: int = 2048) -> None:
        self.capacity = capacity
        self._ring = np.zeros((capacity, len(STAGES)), dtype=np.float64)
        self.count = 0  # frames ever recorded
        self._taken = 0  # `count` when the last window was taken
        self._taken_at = time.monotonic()
        self._lock = threading.Lock()  # only taken by readers vs. reset; the writer never waits long

    def record(self, pre_ms: float, invoke_ms: float, post_ms: float) -> None:
        row = self._ring[self.count % self.capacity]
        row[0] = pre_ms + invoke_ms + post_ms
        row[1] = pre_ms
        row[2] = invoke_ms
        row[3] = post_ms
        self.count += 1

    def _rows(self, since: int) -> np.ndarray:
        end = self.count
        n = min(end - since, self.capacity)
        if n <= 0:
            return self._ring[:0]
        idx = np.arange(end - n, end) % self.capacity
        return self._ring[idx]  # fancy indexing copies: safe against the writer

    def window(self, consume: bool = True) -> dict:
        """Latency summary and fps over the frames since the last consumed window."""
        with self._lock:
            now = time.monotonic()
            since, since_t = self._taken, self._taken_at
            end = self.count
            rows = self._rows(since)
            if consume:
                self._taken, self._taken_at = end, now
        dt = max(now - since_t, 1e-9)
        out = _summary(rows[:, 0])
        for i, stage in enumerate(STAGES[1:], start=1):
            out[stage] = _summary(rows[:, i])
        return {"frames": end - since, "fps": round((end - since) / dt, 2), "latency_ms": out}

    def totals_since(self, since: int) -> tuple[np.ndarray, int]:
        """The total latency (ms) of the frames recorded since `since` (at most the ring's
        capacity), and the count to pass next time: for a histogram that sees every frame when
        it is read at least every capacity frames."""
        end = self.count
        return self._rows(since)[:, 0] if end > since else self._ring[:0, 0], end

    def last(self, n: int) -> np.ndarray:
        """The total latency (ms) of the last n frames, oldest first."""
        return self._rows(max(self.count - n, 0))[:, 0]
