"""Raw interpreter against the agent's pipeline, on the same model and the same machine.

The raw side is the loop one writes with the bare interpreter: set_tensor(frame), invoke(),
get_tensor() of each output, on the same synthetic frames. The agent side is the real
InferenceLoop (source, preprocess, invoke, output copy, finite check, stats) at rate 0.

Both sides are timed the same way, from the end times of their own frames after a short
settling time: a round's period is (last end - first end) / frames between them, so neither side
is charged for starting or stopping, and a slow model is not cut short by a fixed window
(counting frames finished inside a sleep reads floor(T/P)/T and charged a 366 ms model 26% it did
not cost). Every round holds at least MIN_FRAMES frame periods whatever the model's speed.
Rounds alternate raw, agent, raw, agent, and each raw round is paired with the agent round after
it: drift in clock speed or background load hits a pair alike, and the overhead is the median of
the paired ratios, with their min and max, and as a per-frame cost in microseconds. Each side's fps is its frames over
its time across all rounds, what one long loop would read.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeagent.config import InputConfig
from edgeagent.engine.model import Model
from edgeagent.errors import EdgeAgentError
from edgeagent.inputs.factory import make_source
from edgeagent.inputs.synthetic import make_frames
from edgeagent.runtime.loop import InferenceLoop
from edgeagent.runtime.stats import percentiles

MIN_FRAMES = 5  # frame periods per round, at least
_clock = time.monotonic  # the loop stamps its frame ends with this clock too


class BenchError(EdgeAgentError):
    code = "bench.failed"


@dataclass(frozen=True)
class Round:
    frames: int  # frame periods timed (frames after the first)
    period_s: float
    latency_ms: list[float]

    @property
    def fps(self) -> float:
        return 1.0 / self.period_s


def _pcts(ms: list[float]) -> dict:
    if not ms:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = percentiles(np.asarray(ms), (50, 95, 99))
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


def _settle(seconds: float) -> float:
    """Time each round runs before it is timed, on both sides: the first frames after the other
    side's round (a thread started or stopped, the interpreter's worker threads woken) ran a few %
    slower on this machine and would charge the switch to whichever side comes second."""
    return min(0.2 * seconds, 0.25)


def _fps(rounds) -> float:
    """Frames over time across the rounds: what one long loop would read."""
    rounds = list(rounds)
    return sum(r.frames for r in rounds) / sum(r.frames * r.period_s for r in rounds)


def _raw_round(model: Model, frames: list, seconds: float, min_frames: int) -> Round:
    """The loop a developer writes with the bare interpreter: set the input, invoke, read the
    outputs. Runs until `seconds` have passed and `min_frames` periods were timed."""
    it = model.interpreter
    idx = model.inputs[0].index
    outs = [o.index for o in model.outputs]
    set_tensor, invoke, get_tensor = it.set_tensor, it.invoke, it.get_tensor
    clock = _clock
    nf = len(frames)
    lat = []
    first = None
    settle = clock() + _settle(seconds)
    n = 0
    while True:
        a = clock()
        set_tensor(idx, frames[n % nf])
        invoke()
        for o in outs:
            get_tensor(o)
        b = clock()
        n += 1
        if first is None:
            if b >= settle:
                first, n = b, 1  # periods are counted from a frame's end, as on the agent side
            continue
        lat.append((b - a) * 1e3)
        if n - 1 >= min_frames and b - first >= seconds:
            return Round(n - 1, (b - first) / (n - 1), lat)


def _agent_round(model: Model, seconds: float, min_frames: int, period_hint: float) -> Round:
    """The real inference loop at rate 0, timed from the frame end stamps it keeps itself.
    This thread sleeps through the round (no polling that would take the GIL from the loop)."""
    source = make_source(InputConfig(source="synthetic", rate_hz=0.0), model.inputs[0])
    source.open()
    loop = InferenceLoop(model, source, rate_hz=0.0)
    loop.start()
    try:
        patience = 10.0 + 20 * period_hint
        if not loop.first_frame.wait(patience):
            what = loop.counters.last_error or f"no frame in {patience:.0f} s"
            raise BenchError("bench.no_frames", f"the agent loop served no frame: {what}")
        time.sleep(_settle(seconds))
        c0 = loop.stats.count
        t0 = loop.frame_ends(1)[-1]  # the end of frame c0 (stamped before it is counted)
        deadline = _clock() + patience + seconds + (min_frames + 1) * period_hint * 3
        time.sleep(max(seconds, (min_frames + 0.5) * period_hint))
        while loop.stats.count - c0 < min_frames:
            if _clock() > deadline or not loop.running:
                what = loop.counters.last_error or "too few frames"
                raise BenchError("bench.no_frames", f"the agent loop stopped serving: {what}")
            time.sleep(max(period_hint / 2, 0.001))
        c1 = loop.stats.count
        t1 = loop.frame_ends(1)[-1]
    finally:
        loop.stop(timeout=max(3.0, 3 * period_hint))
        source.close()
    n = c1 - c0
    lat = loop.stats.last(min(n, loop.stats.capacity)).tolist()
    return Round(n, (t1 - t0) / n, lat)


def _invoke_only(model: Model, seconds: float, min_frames: int) -> float:
    """benchmark_model's figure: invoke() alone, the input never rewritten."""
    invoke = model.interpreter.invoke
    t0 = time.perf_counter()
    n = 0
    while n < min_frames or time.perf_counter() - t0 < seconds:
        invoke()
        n += 1
    return n / (time.perf_counter() - t0)


def run_bench(path: str, *, seconds: float = 10.0, threads: int = 0, backend: str = "auto",
              rounds: int = 5, min_frames: int = MIN_FRAMES,
              progress: Callable[[str], None] | None = None, delegate: Any = None) -> dict:
    """Alternate `rounds` raw and agent rounds over about `seconds` (longer when the model is
    too slow for min_frames per round); raises EdgeAgentError with a one-line message."""
    if rounds < 1:
        raise BenchError("bench.bad_args", "--rounds must be at least 1")
    if not seconds > 0:
        raise BenchError("bench.bad_args", "--seconds must be positive")
    if min_frames < 1:
        raise BenchError("bench.bad_args", "min_frames must be at least 1")
    model = Model.load(path, backend=backend, num_threads=threads, delegate=delegate)
    try:
        out = _run(model, path, seconds, rounds, min_frames, progress)
        out["delegate"] = model.delegate  # raw and agent alike ran on it
        return out
    except EdgeAgentError:
        raise
    except Exception as e:  # noqa: BLE001 - the interpreter's own errors, as one line
        msg = str(e).strip().splitlines()
        raise BenchError("bench.invoke_failed", f"{type(e).__name__}: {msg[0] if msg else ''}") from None
    finally:
        model.close()


def _run(model: Model, path: str, seconds: float, rounds: int, min_frames: int,
         progress: Callable[[str], None] | None) -> dict:
    t_start = time.perf_counter()
    # warm up (the first invokes of XNNPACK are slow): 20 invokes or 1 s, at least 2
    t0 = time.perf_counter()
    for i in range(20):
        model.invoke()
        if i >= 1 and time.perf_counter() - t0 > 1.0:
            break
    per = seconds / (2 * rounds)
    frames = make_frames(model.inputs[0])
    invoke_only = _invoke_only(model, min(per, 1.0), 2)
    pairs: list[tuple[Round, Round]] = []
    for r in range(rounds):
        raw = _raw_round(model, frames, per, min_frames)
        agent = _agent_round(model, per, min_frames, raw.period_s)
        pairs.append((raw, agent))
        if progress:
            progress(f"round {r + 1}/{rounds}: raw {raw.fps:.1f} fps, agent {agent.fps:.1f} fps "
                     f"({raw.frames}/{agent.frames} frames)")
    ratios = [1 - raw.period_s / agent.period_s for raw, agent in pairs]  # = 1 - agent fps / raw fps
    cost_us = [(agent.period_s - raw.period_s) * 1e6 for raw, agent in pairs]
    raw_lat = [x for raw, _ in pairs for x in raw.latency_ms]
    agent_lat = [x for _, agent in pairs for x in agent.latency_ms]
    return {
        "model": path,
        "backend": model.backend,
        "threads": model.num_threads,
        "seconds": round(time.perf_counter() - t_start, 2),
        "rounds": rounds,
        "frames_per_round": {"raw": min(r.frames for r, _ in pairs), "agent": min(a.frames for _, a in pairs)},
        "raw": {"fps": round(_fps(r for r, _ in pairs), 2), "latency_ms": _pcts(raw_lat)},
        "agent": {"fps": round(_fps(a for _, a in pairs), 2), "latency_ms": _pcts(agent_lat)},
        "overhead": {"median": round(statistics.median(ratios), 5), "min": round(min(ratios), 5),
                     "max": round(max(ratios), 5)},
        "per_frame_us": {"median": round(statistics.median(cost_us), 2), "min": round(min(cost_us), 2),
                         "max": round(max(cost_us), 2)},
        "invoke_only_fps": round(invoke_only, 2),
        "pairs": [{"raw_fps": round(r.fps, 3), "agent_fps": round(a.fps, 3), "raw_frames": r.frames,
                   "agent_frames": a.frames} for r, a in pairs],
    }
