"""Raw interpreter against the agent's pipeline, on the same model and the same machine.

The raw side is the loop one writes with the bare interpreter: set_tensor(frame), invoke(),
get_tensor() of each output, on the same synthetic frames. The agent side is the real
InferenceLoop (source, preprocess, invoke, output copy, finite check, stats) at rate 0.
benchmark_model's own figure (invoke alone, the input never rewritten) is reported beside them.
The two alternate in short rounds so drift in clock speed or background load hits both alike;
the figures are the medians of the rounds.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

from edgeagent.config import InputConfig
from edgeagent.engine.model import Model
from edgeagent.inputs.factory import make_source
from edgeagent.inputs.synthetic import make_frames
from edgeagent.runtime.loop import InferenceLoop


def _pcts(ms: np.ndarray) -> dict:
    p50, p95, p99 = np.percentile(ms, (50, 95, 99))
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


def _raw_round(model: Model, frames: list, seconds: float) -> tuple[float, list[float]]:
    """The loop a developer writes with the bare interpreter: set the input, invoke, read the
    outputs (the same synthetic frames the agent's source yields)."""
    it = model.interpreter
    idx = model.inputs[0].index
    outs = [o.index for o in model.outputs]
    set_tensor, invoke, get_tensor = it.set_tensor, it.invoke, it.get_tensor
    perf = time.perf_counter
    nf = len(frames)
    lat = []
    t0 = perf()
    end = t0 + seconds
    n = 0
    while True:
        a = perf()
        set_tensor(idx, frames[n % nf])
        invoke()
        for o in outs:
            get_tensor(o)
        b = perf()
        lat.append((b - a) * 1e3)
        n += 1
        if b >= end:
            break
    return n / (b - t0), lat


def _invoke_only(model: Model, seconds: float) -> float:
    """benchmark_model's figure: invoke() alone, the input never rewritten."""
    invoke = model.interpreter.invoke
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        invoke()
        n += 1
    return n / (time.perf_counter() - t0)


def _agent_round(model: Model, seconds: float) -> tuple[float, list[float]]:
    source = make_source(InputConfig(source="synthetic", rate_hz=0.0), model.inputs[0])
    source.open()
    loop = InferenceLoop(model, source, rate_hz=0.0)
    loop.start()
    loop.first_frame.wait(10)
    c0, t0 = loop.stats.count, time.perf_counter()
    time.sleep(seconds)
    c1, t1 = loop.stats.count, time.perf_counter()
    loop.stop()
    source.close()
    lat = loop.stats.last(min(c1 - c0, loop.stats.capacity)).tolist()
    return (c1 - c0) / (t1 - t0), lat


def run_bench(path: str, *, seconds: float = 10.0, threads: int = 0, backend: str = "auto",
              rounds: int = 5, progress: Callable[[str], None] | None = None) -> dict:
    model = Model.load(path, backend=backend, num_threads=threads)
    for _ in range(20):  # warm up: the first invokes of XNNPACK are slow
        model.invoke()
    per = max(seconds / (2 * rounds), 0.2)
    frames = make_frames(model.inputs[0])
    raw_fps, agent_fps, raw_lat, agent_lat = [], [], [], []
    invoke_only = _invoke_only(model, min(per, 1.0))
    for r in range(rounds):
        f, lat = _raw_round(model, frames, per)
        raw_fps.append(f)
        raw_lat += lat
        f, lat = _agent_round(model, per)
        agent_fps.append(f)
        agent_lat += lat
        if progress:
            progress(f"round {r + 1}/{rounds}: raw {raw_fps[-1]:.1f} fps, agent {agent_fps[-1]:.1f} fps")
    raw = statistics.median(raw_fps)
    agent = statistics.median(agent_fps)
    model.close()
    return {
        "model": path,
        "backend": model.backend,
        "threads": threads or None,
        "seconds": seconds,
        "raw": {"fps": round(raw, 2), "latency_ms": _pcts(np.asarray(raw_lat))},
        "agent": {"fps": round(agent, 2), "latency_ms": _pcts(np.asarray(agent_lat))},
        "overhead": round(1 - agent / raw, 4),
        "invoke_only_fps": round(invoke_only, 2),
    }
