"""Rolling latency statistics with a bounded memory and no per-frame allocation.

The loop writes one row per frame into preallocated rings (plain lists: a float store into a list
costs a few tens of nanoseconds, a numpy scalar store about ten times that); percentiles are
computed only when someone asks (telemetry every few seconds, `status`), over the frames since
the previous window was taken, capped at the ring size. So the per-frame cost is three float stores.
"""

from __future__ import annotations

import threading
import time
from typing import Iterable

import numpy as np

STAGES = ("total", "preprocess", "invoke", "postprocess")


def median(values: Iterable[float]) -> float:
    """statistics.median's answer without the statistics module, which loads decimal and
    fractions (0.6 MiB of a daemon's RSS), nor np.median (numpy.ma, below)."""
    s = sorted(values)
    n = len(s)
    if not n:
        raise ValueError("no median of no values")
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """np.percentile's default (linear) method on a sort of our own: np.percentile goes through
    np.unique, which imports numpy.ma on first use (about a MiB of RSS and 14 ms in a daemon
    that has no other use for it)."""
    s = np.sort(values, axis=None)
    n = s.size
    out = []
    for q in qs:
        pos = q / 100 * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        out.append(float(s[lo] + (s[hi] - s[lo]) * (pos - lo)))
    return out


def _summary(col: np.ndarray) -> dict:
    if col.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p95, p99 = percentiles(col, (50, 95, 99))
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
        self._pre = [0.0] * capacity
        self._inv = [0.0] * capacity
        self._post = [0.0] * capacity
        self.count = 0  # frames ever recorded
        self._taken = 0  # `count` when the last window was taken
        self._taken_at = time.monotonic()
        self._lock = threading.Lock()  # only taken by readers vs. reset; the writer never waits long

    def record(self, pre_ms: float, invoke_ms: float, post_ms: float) -> None:
        i = self.count % self.capacity
        self._pre[i] = pre_ms
        self._inv[i] = invoke_ms
        self._post[i] = post_ms
        self.count += 1

    def _rows(self, since: int) -> np.ndarray:
        """Rows (total, pre, invoke, post) of the frames since `since`, oldest first (a copy)."""
        end = self.count
        n = min(end - since, self.capacity)
        if n <= 0:
            return np.zeros((0, len(STAGES)))
        idx = np.arange(end - n, end) % self.capacity
        parts = np.array([self._pre, self._inv, self._post], dtype=np.float64)[:, idx].T
        return np.column_stack([parts.sum(axis=1), parts])

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
        return self._rows(since)[:, 0] if end > since else np.zeros(0), end

    def last(self, n: int) -> np.ndarray:
        """The total latency (ms) of the last n frames, oldest first."""
        return self._rows(max(self.count - n, 0))[:, 0]
