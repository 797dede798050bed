"""The probation judge: a pure function from what the new model did to a verdict.

Mender's rule: commit only after the new model has proven itself for probation_s AND
min_inferences; roll back at the first sign of trouble: an invoke error, a non-finite output,
a stalled inference loop, a latency regression or disagreement with the model it replaced.

Latency and agreement are judged on *paired* figures: the previous model stays loaded through
probation and the loop runs it on some of the same live frames, back to back with the new one
(runtime.loop.Shadow). A busy neighbour or a lost time slice then slows both sides of a pair, and
the median of the paired ratios is robust to a few pairs that one of them was unlucky in. Pure,
so it is tested without threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeagent.state.rules import TrialTerms

# Latency and agreement are judged on at least this many pairs: one slow frame (a page fault,
# a GC pause, a lost scheduler slice) cannot roll a good model back.
MIN_PAIRS = 16
# Without a shadow (the previous model did not load after a restart) the absolute limit is
# judged on at least this many frames.
MIN_LATENCY_FRAMES = 10
# and beyond this many ms (µs-scale models jitter by ratios of 2x from scheduling alone)
LATENCY_NOISE_MS = 0.2


@dataclass(frozen=True)
class Limits:
    """A trial's terms in the judge's units, fixed when the trial starts: a config change mid-trial
    does not move the goalposts."""

    probation_s: float
    min_inferences: int
    max_latency_factor: float
    max_latency_ms: float | None = None
    min_agreement_pct: int | None = None
    stall_s: float = 30.0  # no frame for longer than this: the model hangs
    # no shadow pairs (an exclusive accelerator): the previous model's invoke p50 in this process,
    # measured before the switch, against which the new model's own p50 is judged
    baseline_ms: float | None = None


@dataclass(frozen=True)
class Verdict:
    """What the judge decided, with the stable code a rollback reports."""

    decision: str  # "continue" | "commit" | "rollback"
    reason: str = ""
    code: str = ""  # probation.* for a rollback


def judge(counters: dict, shadow: dict | None, limits: Limits, elapsed_s: float, stalled_s: float = 0.0) -> Verdict:
    """counters: ModelCounters.to_dict() of the model on trial; shadow: Shadow.summary() or None
    when the previous model is not loaded; stalled_s: how long the loop has been inside the model
    (InferenceLoop.model_stalled_s)."""
    if stalled_s > limits.stall_s:
        return Verdict("rollback", f"the inference loop stalled inside the model for {stalled_s:.1f} s "
                                   f"(limit {limits.stall_s:.1f} s)", "probation.stalled")
    if counters["errors"]:
        return Verdict("rollback", f"invoke failed {counters['errors']}x: {counters.get('last_error') or ''}".strip(),
                       "probation.errors")
    if counters["nonfinite"]:
        return Verdict("rollback", f"non-finite outputs in {counters['nonfinite']} of {counters['frames']} inferences",
                       "probation.nonfinite")
    pairs = shadow["pairs"] if shadow else 0
    if shadow and pairs >= MIN_PAIRS and shadow["ratio"] is not None:
        new, old, ratio = shadow["new_p50_ms"], shadow["old_p50_ms"], shadow["ratio"]
        if ratio > limits.max_latency_factor and new - old > LATENCY_NOISE_MS:
            return Verdict("rollback", f"latency regression: invoke {new:.2f} ms vs {old:.2f} ms for the previous model "
                                       f"on the same frames, median paired ratio {ratio:.2f} over {pairs} frames "
                                       f"(limit {limits.max_latency_factor}x)", "probation.too_slow")
    p50 = shadow["new_p50_ms"] if shadow and pairs >= MIN_PAIRS else counters.get("invoke_p50_ms")
    enough = pairs >= MIN_PAIRS or counters["frames"] >= MIN_LATENCY_FRAMES
    base = limits.baseline_ms
    if shadow is None and base and p50 is not None and counters["frames"] >= MIN_LATENCY_FRAMES \
            and p50 > limits.max_latency_factor * base and p50 - base > LATENCY_NOISE_MS:
        return Verdict("rollback", f"latency regression: invoke p50 {p50:.2f} ms vs {base:.2f} ms for the previous "
                                   f"model before the switch (limit {limits.max_latency_factor}x; no shadow pairs "
                                   f"on an exclusive accelerator)", "probation.too_slow")
    if limits.max_latency_ms is not None and p50 is not None and enough and p50 > limits.max_latency_ms:
        return Verdict("rollback", f"invoke p50 {p50:.2f} ms over max_latency_ms {limits.max_latency_ms}",
                       "probation.too_slow")
    if limits.min_agreement_pct and shadow and shadow["compared"] >= MIN_PAIRS:
        pct = 100.0 * shadow["agreed"] / shadow["compared"]
        if pct < limits.min_agreement_pct:
            return Verdict("rollback", f"outputs agree with the previous model on {pct:.1f}% of {shadow['compared']} "
                                       f"frames (min {limits.min_agreement_pct}%)", "probation.disagreement")
    if elapsed_s < limits.probation_s or counters["frames"] < limits.min_inferences:
        return Verdict("continue")
    if stalled_s > limits.stall_s / 4:
        return Verdict("continue")  # never commit while the loop is inside a long call
    if shadow is not None and pairs < MIN_PAIRS:
        return Verdict("continue")  # not judged yet: wait for enough paired frames
    if limits.min_agreement_pct and shadow is not None and shadow["compared"] < MIN_PAIRS:
        return Verdict("continue")
    return Verdict("commit", f"{counters['frames']} inferences in {elapsed_s:.1f} s, no errors"
                             + (f", {pairs} paired frames at {shadow['ratio']:.2f}x the previous model" if pairs else ""))


# A loop that spends this many frame times inside one model call is stuck, not slow ...
STALL_FRAMES = 20
# ... but never less than this (page faults, a first XNNPACK invoke, a loaded SD card)
STALL_MIN_S = 2.0
# and with no watchdog, never more than this
STALL_MAX_S = 60.0


def stall_limit_s(frame_s: float, watchdog_s: float | None) -> float:
    """How long the loop may stay inside one model call before it counts as hung: a bound from
    the model's own frame time, acted on before systemd's watchdog (half its period) fires."""
    cap = watchdog_s / 2 if watchdog_s else STALL_MAX_S
    return round(min(max(STALL_MIN_S, STALL_FRAMES * frame_s), cap), 3)


def terms_for(m: Any, ucfg: Any, *, expected_ms: float | None, before: dict | None) -> TrialTerms:
    """What a trial of manifest `m` is judged by: the manifest's signed health overrides, else
    the device's [update] settings. The live switch and the offline install both build the
    trial record from this, so the two cannot drift apart."""
    h = m.health
    pick = (lambda v, d: v if v is not None else d)
    return TrialTerms(probation_s=float(pick(h.probation_s if h else None, ucfg.probation_s)),
                      min_inferences=int(pick(h.min_inferences if h else None, ucfg.min_inferences)),
                      version=m.version, max_latency_ms=h.max_latency_ms if h else None,
                      min_agreement_pct=h.min_agreement_pct if h else None, expected_ms=expected_ms, before=before,
                      created=m.created)


def limits_for(terms: TrialTerms | dict, ucfg: Any, stall_s: float) -> Limits:
    """The judge's limits for a trial, from its terms (or its record in state.json after a restart)."""
    t = terms if isinstance(terms, dict) else vars(terms)
    return Limits(probation_s=float(t.get("probation_s") if t.get("probation_s") is not None else ucfg.probation_s),
                  min_inferences=int(t.get("min_inferences") if t.get("min_inferences") is not None
                                     else ucfg.min_inferences),
                  max_latency_factor=ucfg.max_latency_factor, max_latency_ms=t.get("max_latency_ms"),
                  min_agreement_pct=t.get("min_agreement_pct"), stall_s=stall_s)
