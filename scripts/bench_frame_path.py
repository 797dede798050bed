#!/usr/bin/env python3
"""The per-frame path of the agent's model against a fair bare loop, in one process, interleaved.

    .venv/bin/python scripts/bench_frame_path.py [MODEL ...] [--frames 20000] [--check-finite-every N]

"Fair": the bare loop does the same work the agent must do. For a frame already in the input's
dtype: set_tensor, invoke, get_tensor of each output. For a uint8 camera frame into a float
model: the same normalisation ((pixel - mean) / std, as one float32 multiply-add into a buffer
of its own), then set_tensor, invoke, get_tensor. The agent side is edgeagent.engine.model.Model
as the loop drives it: preprocess, invoke, the finiteness check (on the interpreter's buffers;
outputs are copied only when a reader wants them), checked every `check_finite_every` frames as
the loop does outside a trial. Each frame runs both sides back to back, alternating which goes
first, each timed on its own; the figure is the median of the per-frame differences, with the
range of the medians of ten consecutive blocks. Pairing single frames cancels this VM's drift,
which rounds of a thousand frames did not: their differences swung by +-300 us around a 1 ms
invoke. `edgeagent bench` times the whole loop (source, stats, stamps) against the bare loop.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeagent.engine.model import Model  # noqa: E402
from edgeagent.runtime.loop import CHECK_FINITE_EVERY  # noqa: E402

SHARED = REPO.parent / "shared/models"


def back_to_back(first, second, clock) -> tuple[int, int]:
    """The two calls' times, one right after the other."""
    t0 = clock()
    first()
    t1 = clock()
    second()
    return t1 - t0, clock() - t1


def measure(path: str, frames: int, threads: int = 0, clock=time.perf_counter_ns,
            with_invoke: bool = True, check_every: int = CHECK_FINITE_EVERY) -> dict:
    m = Model.load(path, num_threads=threads, input_mean=127.5, input_std=127.5)
    spec = m.inputs[0]
    it = m.interpreter
    outs = [o.index for o in m.outputs]
    rng = np.random.default_rng(0)
    x = rng.random(spec.shape, dtype=np.float32).astype(spec.dtype)
    float_model = spec.dtype == np.float32
    u8 = rng.integers(0, 256, spec.shape[1:], dtype=np.uint8) if float_model and len(spec.shape) == 4 else None
    buf = np.empty(spec.shape, np.float32)
    k, off = np.float32(1 / 127.5), np.float32(-1.0)

    m.invoke()  # outputs exist, for the sides that run without invoke
    invoke = it.invoke if with_invoke else (lambda: None)
    m_invoke = m.invoke if with_invoke else (lambda: None)

    def bare_float() -> None:
        it.set_tensor(spec.index, x)
        invoke()
        for o in outs:
            it.get_tensor(o)

    frame_no = [0]

    def check() -> None:  # as InferenceLoop: frame_no % check_finite_every == 0 and model.nonfinite()
        frame_no[0] += 1
        if frame_no[0] % check_every == 0:
            m.nonfinite()

    def agent_float() -> None:
        m.preprocess(x)
        m_invoke()
        check()

    def bare_u8() -> None:
        np.multiply(u8, k, out=buf[0], casting="unsafe")
        buf[0] += off
        it.set_tensor(spec.index, buf)
        invoke()
        for o in outs:
            it.get_tensor(o)

    def agent_u8() -> None:
        m.preprocess(u8)
        m_invoke()
        check()

    pairs = [("float", bare_float, agent_float)] + ([("uint8", bare_u8, agent_u8)] if u8 is not None else [])
    out = {"model": Path(path).name}
    for name, bare, agent in pairs:
        for _ in range(200):  # warm both paths
            bare()
            agent()
        a, b = np.empty(frames), np.empty(frames)
        for i in range(frames):  # frame by frame, alternating which side goes first
            if i & 1:
                a[i], b[i] = back_to_back(agent, bare, clock)
            else:
                b[i], a[i] = back_to_back(bare, agent, clock)
        d = (a - b) / 1e3
        blocks = [float(np.median(x)) for x in np.array_split(d, 10)]
        out[name] = {"bare_us": round(float(np.median(b)) / 1e3, 1), "agent_minus_bare_us": round(float(np.median(d)), 2),
                     "min": round(min(blocks), 2), "max": round(max(blocks), 2)}
    m.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--frames", type=int, default=20000, help="frames per side and model")
    ap.add_argument("--check-finite-every", type=int, default=CHECK_FINITE_EVERY,
                    help=f"the loop's setting outside a trial (model.check_finite_every, default {CHECK_FINITE_EVERY})")
    ap.add_argument("--threads", type=int, default=0, help="interpreter threads (0: one per core)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this thread's CPU time (time.thread_time), which a busy neighbour or a "
                         "VM's stolen time does not inflate; with --threads 1 it holds all of a frame's work")
    ap.add_argument("--no-invoke", action="store_true",
                    help="both sides without the invoke (the same on both): the pipeline's own work, "
                         "without a millisecond of model time and its noise around a few microseconds")
    a = ap.parse_args()
    clock = time.thread_time_ns if a.clock == "cpu" else time.perf_counter_ns
    models = a.models or [str(p) for p in (SHARED / "face_detection_short_range.tflite", SHARED / "face_landmark.tflite",
                                           REPO / ".bench-models/iris_landmark.tflite")  # scripts/fetch_bench_models.sh
                          if p.exists()]
    if not models:
        from edgeagent.engine import testmodels

        models = [str(testmodels.write_model(Path("/tmp/bench-frame-conv.tflite"), kind="conv",
                                             input_shape=(1, 128, 128, 3)))]
    rows = [measure(p, a.frames, a.threads, clock, with_invoke=not a.no_invoke, check_every=a.check_finite_every)
            for p in models]
    for r in rows:
        for k in ("float", "uint8"):
            if k in r:
                v = r[k]
                print(f"{r['model']:40} {k:6} frames: bare {v['bare_us']:8.1f} us, agent {v['agent_minus_bare_us']:+6.2f} us "
                      f"per frame (blocks {v['min']:+.2f} to {v['max']:+.2f})")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
