#!/usr/bin/env python3
"""The agent pipeline's overhead against the raw interpreter, checked against an independent loop.

    .venv/bin/python scripts/bench_overhead.py [MODEL ...] [--seconds 60] [--rounds 60] [--segments 20]
                                               [--threads 0]

For each model: `edgeagent bench` (edgeagent.runtime.bench: paired raw/agent rounds timed from
frame end stamps), checked against two independent loops written here: the raw LiteRT
interpreter alone (its own interpreter and input, frames / elapsed) and the agent's inference
loop counted the naive way (frames served between two moments far apart). They run in
alternating segments (independent raw, a slice of the bench, independent agent, ...) so the
machine's drift hits all three alike.

Default models: MediaPipe face detection from ../shared/models if present (else a generated
conv model) as the fast one, and a generated wide convolution (~110 ms an invoke on 2 cores) as
the slow one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeagent.engine.model import cpu_count  # noqa: E402
from edgeagent.runtime.bench import run_bench  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared/models/face_detection_short_range.tflite"


def independent_raw_fps(path: str, threads: int, seconds: float, min_frames: int = 20) -> float:
    """The simplest honest loop: a fresh interpreter, random input, set/invoke/get, count/time."""
    import numpy as np

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=threads)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    outs = [o["index"] for o in it.get_output_details()]
    rng = np.random.default_rng(0)
    if np.issubdtype(inp["dtype"], np.integer):
        x = rng.integers(0, 255, inp["shape"]).astype(inp["dtype"])
    else:
        x = rng.random(inp["shape"], dtype=np.float32).astype(inp["dtype"])
    for _ in range(3):
        it.set_tensor(inp["index"], x)
        it.invoke()
    n = 0
    t0 = time.perf_counter()
    while n < min_frames or time.perf_counter() - t0 < seconds:
        it.set_tensor(inp["index"], x)
        it.invoke()
        for o in outs:
            it.get_tensor(o)
        n += 1
    return n / (time.perf_counter() - t0)


def independent_agent_fps(path: str, threads: int, seconds: float) -> float:
    """The agent's loop over one long run, counted the plain way: frames served between two
    frame ends far apart (the loop's own stamps are not used)."""
    from edgeagent.config import InputConfig
    from edgeagent.engine.model import Model
    from edgeagent.inputs.factory import make_source
    from edgeagent.runtime.loop import InferenceLoop

    model = Model.load(path, num_threads=threads)
    source = make_source(InputConfig(source="synthetic", rate_hz=0.0), model.inputs[0])
    source.open()
    loop = InferenceLoop(model, source, rate_hz=0.0)
    loop.start()
    loop.first_frame.wait(60)

    def at_a_frame_end() -> tuple[int, float]:  # both ends on a frame boundary (1 ms polling)
        c = loop.stats.count
        while loop.stats.count == c:
            time.sleep(0.001)
        return loop.stats.count, time.monotonic()

    c0, t0 = at_a_frame_end()
    time.sleep(seconds)
    c1, t1 = at_a_frame_end()
    loop.stop()
    source.close()
    model.close()
    return (c1 - c0) / (t1 - t0)


def default_models(tmp: Path) -> list[str]:
    from edgeagent.engine import testmodels

    fast = str(SHARED) if SHARED.exists() else str(testmodels.write_model(
        tmp / "conv.tflite", kind="conv", input_shape=(1, 128, 128, 3), filters=32))
    # a wide convolution (512x512x3 -> 256x256x2560, 4.5 G multiply-adds): steady ~110 ms on 2
    # cores (a model spinning in a WHILE loop ran either 125 or 180 ms an invoke, a poor yardstick)
    slow = str(testmodels.write_model(tmp / "slow.tflite", kind="conv", input_shape=(1, 512, 512, 3), filters=2560))
    return [fast, slow]


def _weighted_fps(pairs: list[dict], side: str) -> float:
    frames = sum(p[f"{side}_frames"] for p in pairs)
    return frames / sum(p[f"{side}_frames"] / p[f"{side}_fps"] for p in pairs)


def measure(model: str, threads: int, seconds: float, rounds: int, segments: int) -> dict:
    """The bench and the independent loops in alternating segments (independent raw, bench,
    independent agent, ...): this machine's speed drifts by several % over tens of seconds, and
    loops run at different times would compare the drift, not the methods."""
    pairs, ind_raw, ind_agent, meta = [], [], [], None
    per = seconds / segments
    for _ in range(segments):
        ind_raw.append(independent_raw_fps(model, threads, seconds=per / 2))
        r = run_bench(model, seconds=per, threads=threads, rounds=max(1, rounds // segments))
        pairs += r["pairs"]
        meta = meta or r
        ind_agent.append(independent_agent_fps(model, threads, seconds=per / 2))
    ratios = sorted(1 - p["agent_fps"] / p["raw_fps"] for p in pairs)
    cost = sorted((1 / p["agent_fps"] - 1 / p["raw_fps"]) * 1e6 for p in pairs)
    raw, agent = _weighted_fps(pairs, "raw"), _weighted_fps(pairs, "agent")
    ir, ia = statistics.mean(ind_raw), statistics.mean(ind_agent)
    return {"model": model, "threads": threads, "pairs": len(pairs),
            "min_frames_per_round": min(min(p["raw_frames"], p["agent_frames"]) for p in pairs),
            "raw_fps": round(raw, 3), "agent_fps": round(agent, 3),
            "raw_latency_ms": meta["raw"]["latency_ms"], "agent_latency_ms": meta["agent"]["latency_ms"],
            "overhead": {"median": round(statistics.median(ratios), 5), "min": round(ratios[0], 5),
                         "max": round(ratios[-1], 5)},
            "per_frame_us": {"median": round(statistics.median(cost), 2), "min": round(cost[0], 2),
                             "max": round(cost[-1], 2)},
            "independent_raw_fps": round(ir, 3), "independent_agent_fps": round(ia, 3),
            "bench_raw_vs_independent": round(raw / ir - 1, 5),
            "bench_agent_vs_independent": round(agent / ia - 1, 5),
            "independent_overhead": round(1 - ia / ir, 5)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--seconds", type=float, default=60.0, help="per model, for edgeagent bench")
    ap.add_argument("--rounds", type=int, default=60, help="paired rounds per model")
    ap.add_argument("--segments", type=int, default=20, help="bench/independent alternations per model")
    ap.add_argument("--threads", type=int, default=0, help="0 = one per core")
    a = ap.parse_args()
    threads = a.threads or cpu_count()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models or default_models(Path(tmp)):
            r = measure(model, threads, a.seconds, a.rounds, a.segments)
            results.append(r)
            o, us = r["overhead"], r["per_frame_us"]
            print(f"{os.path.basename(model)} ({threads} threads, {r['pairs']} paired rounds of >= "
                  f"{r['min_frames_per_round']} frames, in {a.segments} segments)")
            print(f"  {'':24}{'fps':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
            for side in ("raw", "agent"):
                lat = r[f"{side}_latency_ms"]
                print(f"  {'bench ' + side:24}{r[side + '_fps']:>10.2f}{lat['p50']:>10.3f}{lat['p95']:>10.3f}"
                      f"{lat['p99']:>10.3f}")
            print(f"  {'independent raw loop':24}{r['independent_raw_fps']:>10.2f}")
            print(f"  {'independent agent loop':24}{r['independent_agent_fps']:>10.2f}")
            print(f"  overhead {o['median'] * 100:.2f}% (paired min {o['min'] * 100:.2f}%, max {o['max'] * 100:.2f}%), "
                  f"{us['median']:.1f} us per frame; independent loops: {r['independent_overhead'] * 100:.2f}%")
            print(f"  bench raw vs independent raw {r['bench_raw_vs_independent'] * 100:+.2f}%, "
                  f"bench agent vs independent agent {r['bench_agent_vs_independent'] * 100:+.2f}%", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
