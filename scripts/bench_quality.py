#!/usr/bin/env python3
"""What the quality monitor costs the inference thread per frame (runtime/quality.py `on_frame`).

    .venv/bin/python scripts/bench_quality.py [--frames 20000]

For each case a real model is invoked once on a real-shaped frame, and then `on_frame` (three
appends: argmax and max of output 0, the input statistic) is timed over many calls with the
interpreter's outputs, windows handed over as in the daemon; the judging (`poll`) is timed apart,
as it runs on the telemetry thread. Reported: the median of 7 runs, in microseconds per frame.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeagent.engine import testmodels  # noqa: E402
from edgeagent.engine.model import Model  # noqa: E402
from edgeagent.runtime.quality import QualityMonitor  # noqa: E402

CASES = (  # name, model kind, input shape, outputs, frame
    ("camera 224x224x3 uint8, 1001 classes", "conv", (1, 224, 224, 3), 1001, lambda: np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)),
    ("camera 64x64x3 uint8, 8 classes", "conv", (1, 64, 64, 3), 8, lambda: np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)),
    ("sensor window 50x6 float32, 4 classes", "dense", (1, 300), 4, lambda: np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)),
)


def per_frame_us(mon: QualityMonitor, model: Model, frame: np.ndarray, outs: list, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        mon.on_frame(model, frame, outs)
    return (time.perf_counter() - t) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, shape, outputs, make in CASES:
            path = testmodels.write_model(Path(tmp) / "m.tflite", kind=kind, input_shape=shape, outputs=outputs, seed=1)
            model = Model.load(str(path), num_threads=1)
            frame = make()
            model.preprocess(frame)
            model.invoke()
            outs = model.outputs_view()
            mon = QualityMonitor(window=300, learn_frames=1000)
            per_frame_us(mon, model, frame, outs, 2000)  # warm up; learns a reference
            mon.poll()
            runs = []
            for _ in range(7):
                runs.append(per_frame_us(mon, model, frame, outs, args.frames))
                t = time.perf_counter()
                mon.poll()  # the telemetry thread's share, for the record
                judge_ms = (time.perf_counter() - t) * 1e3
            windows = args.frames // 300
            print(f"{name}: on_frame {statistics.median(runs):.2f} us/frame (min {min(runs):.2f}); "
                  f"judging a window of 300 on the telemetry thread {judge_ms / max(1, windows):.2f} ms")
            model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
