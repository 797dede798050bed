#!/usr/bin/env python3
"""Publisher-side delta build: the in-place and the tensor-aligned paths against bsdiff4.diff,
time, payload and memory.

    .venv/bin/python scripts/bench_release.py [--sizes 1,50,200] [--skip-bsdiff-above MB]
                                              [--layouts finetune,inserted,inserted+finetune]

Layouts: `finetune` keeps the layout (the in-place path); `inserted` is a re-export with one more
1024x1024 layer before the third (every later buffer moves: the tensor-aligned path), and
`inserted+finetune` also nudges every weight (testmodels' insert_layer and finetune).

The models are real .tflite files (edgeagent.engine.testmodels: dense layers of 1024x1024
float32 weights, as many as the size needs), fine-tuned with testmodels.finetune (the float
weights of the last 2 weighted layers perturbed: same size, same layout, what a head fine-tune
produces). Each build runs in a fresh child process that reports its wall time and peak RSS
(VmHWM); both patches are then applied with bsdiff4.patch (sizes up to 50 MB) and with the
device's streaming patcher, and must give the target byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, sys
from pathlib import Path
from edgeagent.update.delta import bsdiff_delta, inplace_delta, tensor_delta
method, old, new, out = sys.argv[1:5]
d = {"inplace": inplace_delta, "tensor": tensor_delta, "bsdiff4": bsdiff_delta}[method](Path(old), Path(new), Path(out))
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"seconds": d.seconds, "size": d.size, "peak_rss_mib": hwm / 1024}))
"""


def make_models(d: Path, mib: int, layout: str = "finetune") -> tuple[Path, Path]:
    from edgeagent.engine import testmodels

    if layout != "finetune":
        n = max(1, round(mib / 16))
        old = testmodels.build_model(kind="dense", input_shape=(1, 8), slow=n, seed=1)
        new = testmodels.build_model(kind="dense", input_shape=(1, 8), slow=n, seed=1, insert_layer=2,
                                     finetune=1e-3 if layout == "inserted+finetune" else 0.0)
        (d / "old.tflite").write_bytes(old)
        (d / "new.tflite").write_bytes(new)
        return d / "old.tflite", d / "new.tflite"
    if mib <= 4:  # one dense layer of the right width
        width = max(int(mib * (1 << 20) / 4 / 4), 64)
        old = testmodels.build_model(kind="dense", input_shape=(1, width), outputs=4, seed=1)
    else:  # slow=N adds 4N dense 1024x1024 layers (16 MiB per N)
        old = testmodels.build_model(kind="dense", input_shape=(1, 8), slow=max(1, round(mib / 16)), seed=1)
    new = testmodels.finetune(old, last_n_buffers=2, seed=2)
    (d / "old.tflite").write_bytes(old)
    (d / "new.tflite").write_bytes(new)
    return d / "old.tflite", d / "new.tflite"


def build(method: str, old: Path, new: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, method, str(old), str(new), str(out)], capture_output=True,
                       text=True, cwd=REPO)
    if r.returncode:
        raise SystemExit(f"bench_release: {method} failed: {r.stderr.strip().splitlines()[-1]}")
    return json.loads(r.stdout)


def check(old: Path, new: Path, patch: Path, with_bsdiff4: bool) -> None:
    from edgeagent.update.patch import apply_delta

    want = hashlib.sha256(new.read_bytes()).hexdigest()
    if with_bsdiff4:
        import bsdiff4

        assert hashlib.sha256(bsdiff4.patch(old.read_bytes(), patch.read_bytes())).hexdigest() == want
    out = patch.with_suffix(".applied")
    apply_delta(old, hashlib.sha256(old.read_bytes()).hexdigest(), patch, out, target_sha256=want,
                target_size=new.stat().st_size)
    os.chmod(out, 0o644)
    out.unlink()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,50,200", help="model sizes in MB")
    ap.add_argument("--skip-bsdiff-above", type=float, default=1e9, help="MB above which bsdiff4.diff is not run")
    ap.add_argument("--layouts", default="finetune", help="finetune, inserted, inserted+finetune (comma list)")
    a = ap.parse_args()
    rows = []
    for layout in a.layouts.split(","):
        for mib in (float(x) for x in a.sizes.split(",")):
            rows.append(_one(layout, mib, a.skip_bsdiff_above))
    print(json.dumps(rows))
    return 0


def _one(layout: str, mib: float, skip_bsdiff_above: float) -> dict:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        d = Path(tmp)
        old, new = make_models(d, int(mib) if mib >= 1 else 1, layout)
        size = new.stat().st_size
        method = "inplace" if layout == "finetune" else "tensor"
        fast = build(method, old, new, d / "fast.patch")
        check(old, new, d / "fast.patch", size <= 60 << 20 or layout != "finetune")
        slow = None
        if mib <= skip_bsdiff_above:
            slow = build("bsdiff4", old, new, d / "bsdiff4.patch")
            check(old, new, d / "bsdiff4.patch", size <= 60 << 20)
        import numpy as np

        if layout == "finetune":
            changed = int(np.count_nonzero(np.fromfile(old, np.uint8) != np.fromfile(new, np.uint8)))
            what = f"changed {100 * changed / size:4.1f}%"
        else:
            changed, what = None, f"{layout:>17}"
        from edgeagent.engine.layout import buffers

        largest = max(b.size for b in buffers(new))
        row = {"layout": layout, "model_bytes": size, "largest_tensor_bytes": largest, "changed_bytes": changed,
               method: fast, "bsdiff4": slow}
        line = (f"{size / 1e6:8.1f} MB  {what}  {method} {fast['seconds']:7.2f} s "
                f"{fast['size']:>11,} B {fast['peak_rss_mib']:7.1f} MiB (largest tensor {largest / 2**20:.0f} MiB)")
        if slow:
            line += (f" | bsdiff4 {slow['seconds']:7.2f} s {slow['size']:>11,} B {slow['peak_rss_mib']:7.1f} MiB"
                     f" | {slow['seconds'] / fast['seconds']:5.1f}x faster, payload "
                     f"{100 * (fast['size'] / slow['size'] - 1):+.2f}%")
        print(line, flush=True)
        return row


if __name__ == "__main__":
    raise SystemExit(main())
