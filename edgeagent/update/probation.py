"""The probation judge: a pure function from what the new model did to a verdict.

Mender's rule: commit only after the new model has proven itself for probation_s AND
min_inferences; roll back at the first sign of trouble (an invoke error, a non-finite output,
a latency regression against the model it replaced). Pure, so it is tested without threads.
"""

from __future__ import annotations

from dataclasses import dataclass

# Latency is judged on at least this many frames, so one slow frame (a page fault, a GC pause)
# cannot roll a good model back.
MIN_LATENCY_FRAMES = 10
# and beyond this many ms (µs-scale models jitter by ratios of 2x from scheduling alone)
LATENCY_NOISE_MS = 0.2


@dataclass(frozen=True)
class Limits:
    probation_s: float
    min_inferences: int
    max_latency_factor: float
    max_latency_ms: float | None = None


@dataclass(frozen=True)
class Verdict:
    decision: str  # "continue" | "commit" | "rollback"
    reason: str = ""


def judge(counters: dict, baseline_ms: float | None, limits: Limits, elapsed_s: float) -> Verdict:
    """counters: ModelCounters.to_dict() of the model on trial."""
    if counters["errors"]:
        return Verdict("rollback", f"invoke failed {counters['errors']}x: {counters.get('last_error') or ''}".strip())
    if counters["nonfinite"]:
        return Verdict("rollback", f"non-finite outputs in {counters['nonfinite']} of {counters['frames']} inferences")
    p50 = counters.get("invoke_p50_ms")
    if p50 is not None and counters["frames"] >= MIN_LATENCY_FRAMES:
        if baseline_ms and p50 > limits.max_latency_factor * baseline_ms and p50 - baseline_ms > LATENCY_NOISE_MS:
            return Verdict("rollback", f"latency regression: invoke p50 {p50:.2f} ms vs {baseline_ms:.2f} ms before "
                                       f"(limit {limits.max_latency_factor}x)")
        if limits.max_latency_ms is not None and p50 > limits.max_latency_ms:
            return Verdict("rollback", f"invoke p50 {p50:.2f} ms over max_latency_ms {limits.max_latency_ms}")
    if elapsed_s >= limits.probation_s and counters["frames"] >= limits.min_inferences:
        return Verdict("commit", f"{counters['frames']} inferences in {elapsed_s:.1f} s, no errors")
    return Verdict("continue")
