#!/usr/bin/env python3
"""What an update costs the serving loop, measured from the loop's own frame stamps in-process:
the largest gap between two frames around a hot swap, and the frames served while a health
check (the real child process) runs, against quiet moments just before.

    .venv/bin/python scripts/bench_swap_gap.py [--rate 0] [--runs 8]

The swap is done the way the updater does it: build the new interpreter on another thread beside
the loop, warm it up on a recent frame, swap at a frame boundary. Copy this script into another
checkout to measure that version.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeagent.config import InputConfig  # noqa: E402
from edgeagent.engine import testmodels  # noqa: E402
from edgeagent.engine.model import Model  # noqa: E402
from edgeagent.inputs.factory import make_source  # noqa: E402
from edgeagent.runtime.loop import InferenceLoop  # noqa: E402
from edgeagent.update import health  # noqa: E402

SHAPE = (1, 128, 128, 3)


def max_gap_since(loop: InferenceLoop, c0: int) -> float:
    ends = loop.frame_ends(loop.stats.count - c0 + 1)
    return float(np.diff(ends).max()) * 1e3 if ends.size > 1 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=0.0, help="Hz; 0 = flat out")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gap-"))
    paths = [str(testmodels.write_model(tmp / f"v{i}.tflite", kind="conv", input_shape=SHAPE, filters=32, seed=1,
                                        version_tag=i)) for i in range(a.runs + 1)]
    model = Model.load(paths[0], num_threads=a.threads)
    source = make_source(InputConfig(source="synthetic", rate_hz=a.rate), model.inputs[0])
    source.open()
    loop = InferenceLoop(model, source, rate_hz=a.rate, keep_every_s=0.1)
    loop.start()
    time.sleep(1.0)
    quiet, swap = [], []
    for i in range(1, a.runs + 1):
        c0 = loop.stats.count
        time.sleep(0.3)
        quiet.append(max_gap_since(loop, c0))
        c0 = loop.stats.count
        new = Model.load(paths[i], num_threads=a.threads)  # beside the loop, as the updater does
        new.preprocess(loop.recent_frames()[-1])
        new.invoke()
        old = loop.swap(new).result(5)
        time.sleep(0.1)
        swap.append(max_gap_since(loop, c0))
        old.close()
    q_fps, h_fps, h_s = [], [], []
    for i in range(a.runs):
        c0, t0 = loop.stats.count, time.monotonic()
        time.sleep(0.5)
        q_fps.append((loop.stats.count - c0) / (time.monotonic() - t0))
        req = health.HealthRequest(candidate=paths[-1], baseline=paths[0], frames_file="", manifest_io=None,
                                   max_latency_factor=3.0, max_latency_ms=None, num_threads=a.threads)
        c0, t0 = loop.stats.count, time.monotonic()
        res = health.check(req, loop.recent_frames(), timeout_s=60, workdir=tmp)
        dt = time.monotonic() - t0
        assert res.ok, res
        h_fps.append((loop.stats.count - c0) / dt)
        h_s.append(dt)
    loop.stop()
    source.close()
    med = statistics.median
    rate = f"{a.rate:g} Hz" if a.rate else "rate 0 (flat out)"
    print(f"{rate}, {a.threads} threads, {a.runs} swaps and {a.runs} health checks")
    print(f"max gap between frames: quiet 0.3 s windows median {med(quiet):.2f} ms (max {max(quiet):.2f}); "
          f"around a swap median {med(swap):.2f} ms (max {max(swap):.2f})")
    print(f"serving fps: quiet {med(q_fps):.0f}; during a health check {med(h_fps):.0f} "
          f"({100 * med(h / q for h, q in zip(h_fps, q_fps)):.1f}% of quiet, paired median); "
          f"a check takes {med(h_s):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
