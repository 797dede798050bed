#!/usr/bin/env python3
"""The agent pipeline's overhead against the raw interpreter, checked against an independent loop.

    .venv/bin/python scripts/bench_overhead.py [MODEL ...] [--seconds 60] [--rounds 20] [--threads 0]

For each model: `edgeagent bench` (edgeagent.runtime.bench: paired raw/agent rounds timed from
frame end stamps), then an independent raw loop written here against the LiteRT interpreter
alone (its own interpreter, its own frames, frames / elapsed over one long run), and the two
raw figures are compared (the independent loop runs before and after the bench, averaged);
the agent's fps is compared with the independent loop too.

Default models: MediaPipe face detection from ../shared/models if present (else a generated
conv model) as the fast one, and a generated model that spins ~0.1-0.3 s in every invoke
(testmodels spin=N) as the slow one.
"""

from __future__ import annotations

import argparse
import json
import os
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


def default_models(tmp: Path) -> list[str]:
    from edgeagent.engine import testmodels

    fast = str(SHARED) if SHARED.exists() else str(testmodels.write_model(
        tmp / "conv.tflite", kind="conv", input_shape=(1, 128, 128, 3), filters=32))
    slow = str(testmodels.write_model(tmp / "slow.tflite", spin=500_000))
    return [fast, slow]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--seconds", type=float, default=60.0, help="per model, for edgeagent bench")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="0 = one per core")
    a = ap.parse_args()
    threads = a.threads or cpu_count()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models or default_models(Path(tmp)):
            before = independent_raw_fps(model, threads, seconds=max(5.0, a.seconds / 8))
            r = run_bench(model, seconds=a.seconds, threads=threads, rounds=a.rounds)
            after = independent_raw_fps(model, threads, seconds=max(5.0, a.seconds / 8))
            ind = (before + after) / 2  # run on both sides of the bench: slow drift cancels
            r["independent_raw_fps"] = round(ind, 3)
            r["bench_raw_vs_independent"] = round(r["raw"]["fps"] / ind - 1, 5)
            r["agent_vs_independent"] = round(r["agent"]["fps"] / ind - 1, 5)
            results.append(r)
            o, us = r["overhead"], r["per_frame_us"]
            print(f"{os.path.basename(model)} ({threads} threads, {r['rounds']} paired rounds, "
                  f">= {min(r['frames_per_round'].values())} frames each, {r['seconds']:.0f} s)")
            print(f"  {'':22}{'fps':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
            for side in ("raw", "agent"):
                lat = r[side]["latency_ms"]
                print(f"  {'bench ' + side:22}{r[side]['fps']:>10.2f}{lat['p50']:>10.3f}{lat['p95']:>10.3f}"
                      f"{lat['p99']:>10.3f}")
            print(f"  {'independent raw loop':22}{ind:>10.2f}")
            print(f"  overhead {o['median'] * 100:.2f}% (paired min {o['min'] * 100:.2f}%, max {o['max'] * 100:.2f}%), "
                  f"{us['median']:.1f} us per frame; bench raw vs independent "
                  f"{r['bench_raw_vs_independent'] * 100:+.2f}%, agent vs independent "
                  f"{r['agent_vs_independent'] * 100:+.2f}%", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
