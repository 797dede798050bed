#!/usr/bin/env python3
"""Delta size against full size for a fine-tune that changes the last layers of a real model.

    .venv/bin/python scripts/bench_delta.py [MODEL ...]

Default models: ../shared/models/*.tflite (MediaPipe face detection and face landmark). For each,
the weights of the last N weighted layers (operator order) are perturbed (testmodels.finetune), as
a fine-tune of the head would, and the bsdiff4 delta is compared with the full model. Goal: under
20%. A delta cannot be smaller than the bytes that changed: the table also shows how much of the
file those layers are.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bsdiff4  # noqa: E402

from edgeagent.engine.testmodels import finetune  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared/models"


def main() -> int:
    models = [Path(p) for p in sys.argv[1:]] or sorted(SHARED.glob("*.tflite"))
    if not models:
        print("no models: give a .tflite path", file=sys.stderr)
        return 2
    rows = []
    print(f"{'model':36}{'changed':>16}{'bytes changed':>15}{'full KiB':>10}{'delta KiB':>11}{'delta/full':>12}{'diff s':>8}")
    for m in models:
        src = m.read_bytes()
        for n in (1, 2, 4, 0):
            new = finetune(src, last_n_buffers=n, seed=n + 1)
            t = time.perf_counter()
            delta = bsdiff4.diff(src, new)
            dt = time.perf_counter() - t
            label = f"last {n} layer{'s' if n > 1 else ''}" if n else "all (retrain)"
            ratio = len(delta) / len(new)
            changed = sum(a != b for a, b in zip(src, new)) / len(new) if len(src) == len(new) else 1.0
            rows.append({"model": m.name, "changed": label, "bytes_changed": round(changed, 4), "full": len(new),
                         "delta": len(delta), "ratio": round(ratio, 4), "diff_s": round(dt, 2)})
            print(f"{m.name:36}{label:>16}{changed * 100:>14.1f}%{len(new) / 1024:>10.1f}{len(delta) / 1024:>11.1f}"
                  f"{ratio * 100:>11.1f}%{dt:>8.2f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
