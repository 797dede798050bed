#!/usr/bin/env python3
"""Patch time and peak memory as the model grows: the updater's streamed patcher against
bsdiff4.patch() (which holds old + new + patch in memory).

    .venv/bin/python scripts/bench_patch.py [--sizes 1,10,50,100,200] [--diff-cap 50] [--impl stream,bsdiff4]

The "models" are random float32 weights; the new version changes 5% of the bytes, all in the last
tenth of the file (a fine-tuned head). Each apply runs in a fresh child process, which reports its
wall time and VmHWM (peak RSS); the table shows the peak above the RSS after imports, as a
multiple of old + new. For the streamed patcher that includes the file pages of the mmap'ed old
model (page cache the kernel can drop), so its own anonymous memory is also shown, sampled every
2 ms (bsdiff4.patch holds the GIL, so only VmHWM sees its peak).

  stream  = edgeagent.update.patch.apply_delta, as the updater runs it: hash the base, stream the
            patch to disk in 1 MiB pieces, fsync, verify the target sha256.
  bsdiff4 = read old and patch, bsdiff4.patch(), write and fsync the result (what
            bsdiff4.file_patch does, plus the fsync).

Building a delta (bsdiff4.diff, publisher side) needs a suffix sort of the old file and is slow:
150 s and several GiB for 200 MiB. Sizes up to --diff-cap MiB are diffed whole (and the time is
shown); above it, only the changed last tenth is diffed and the patch is extended to the whole
file with one leading "copy the unchanged prefix" control entry, the same form bsdiff4 itself gives
an unchanged prefix, so the apply side does the same work. Set BENCH_DIR to put the files on
another disk (e.g. the SD card); default: the system temp dir.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path

def status():
    return {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.split(":")[0] in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}

impl, d = sys.argv[1], Path(sys.argv[2])
meta = json.loads((d / "meta.json").read_text())
import bsdiff4, numpy
from edgeagent.update.patch import apply_delta
s0 = status()
base_anon, base_rss = s0["RssAnon"], s0["VmRSS"]
peak = [base_anon]
done = threading.Event()
def sample():
    while not done.wait(0.002):
        peak[0] = max(peak[0], status()["RssAnon"])
th = threading.Thread(target=sample); th.start()
t = time.perf_counter()
if impl == "stream":
    apply_delta(d / "old", meta["old_sha"], d / "patch", d / "out", target_sha256=meta["new_sha"], target_size=meta["size"])
else:
    old = (d / "old").read_bytes(); p = (d / "patch").read_bytes()
    new = bsdiff4.patch(old, p)
    with open(d / "out", "wb") as fo:
        fo.write(new); fo.flush(); os.fsync(fo.fileno())
    del old, p, new
dt = time.perf_counter() - t
done.set(); th.join()
st = status()
print(json.dumps({"seconds": dt, "hwm_kib": st["VmHWM"], "anon_peak_kib": peak[0] - base_anon, "base_anon_kib": base_anon, "base_rss_kib": base_rss}))
"""


def make_versions(mib: int, rng):
    """old, new: float32 weights; 5% of the bytes changed, all in the last tenth."""
    import numpy as np

    n = mib << 20
    old = rng.standard_normal(n // 4).astype(np.float32)
    new = old.copy()
    lo = (n - n // 10) // 4
    idx = rng.choice(np.arange(lo, n // 4), size=max(1, n // 20 // 4), replace=False)
    new[idx] = rng.standard_normal(idx.size).astype(np.float32)
    return old.tobytes(), new.tobytes(), lo * 4


def stitched_patch(old: bytes, new: bytes, prefix: int) -> bytes:
    """The patch of the whole file from a diff of the tail: old[:prefix] == new[:prefix] is a copy
    (diff bytes all zero), then the tail patch, whose positions are relative to where it starts."""
    assert old[:prefix] == new[:prefix]
    tail = bsdiff4.diff(old[prefix:], new[prefix:])
    lc, ld = decode_int64(tail[8:16]), decode_int64(tail[16:24])
    control = bz2.decompress(tail[32:32 + lc])
    diff = bz2.decompress(tail[32 + lc:32 + lc + ld])
    extra = tail[32 + lc + ld:]
    ctrl = bz2.compress(encode_int64(prefix) + encode_int64(0) + encode_int64(0) + control)
    comp = bz2.BZ2Compressor()
    zeros = bytes(1 << 20)
    parts = [comp.compress(zeros) for _ in range(prefix >> 20)]
    parts += [comp.compress(bytes(prefix & ((1 << 20) - 1))), comp.compress(diff), comp.flush()]
    dblock = b"".join(parts)
    return b"BSDIFF40" + encode_int64(len(ctrl)) + encode_int64(len(dblock)) + encode_int64(len(new)) + ctrl + dblock + extra


def run_child(impl: str, d: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, impl, str(d)], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise SystemExit(f"child {impl} failed:\n{r.stderr}")
    return json.loads(r.stdout)


def main() -> int:
    global bsdiff4, encode_int64, decode_int64
    import bsdiff4
    from bsdiff4.core import decode_int64, encode_int64
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,10,50,100,200", help="model sizes in MiB (default %(default)s)")
    ap.add_argument("--diff-cap", type=int, default=50, help="diff whole files up to this many MiB; above, "
                    "diff the changed tail and stitch (default %(default)s)")
    ap.add_argument("--impl", default="stream,bsdiff4", help="which appliers to run (default %(default)s)")
    a = ap.parse_args()
    impls = a.impl.split(",")
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'MiB':>5}{'patch KiB':>11}{'diff s':>9}  {'impl':8}{'apply s':>9}{'VmHWM MiB':>11}"
          f"{'above interp.':>15}{'x (old+new)':>13}{'own anon MiB':>14}")
    for mib in [int(x) for x in a.sizes.split(",")]:
        old, new, prefix = make_versions(mib, rng)
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as td:
            d = Path(td)
            (d / "old").write_bytes(old)
            t = time.perf_counter()
            whole = mib <= a.diff_cap
            patch = bsdiff4.diff(old, new) if whole else stitched_patch(old, new, prefix)
            diff_s = time.perf_counter() - t
            (d / "patch").write_bytes(patch)
            size = len(new)
            (d / "meta.json").write_text(json.dumps({"old_sha": hashlib.sha256(old).hexdigest(),
                                                     "new_sha": hashlib.sha256(new).hexdigest(), "size": size}))
            del old, new, patch
            for impl in impls:
                r = run_child(impl, d)
                both = 2 * size
                row = {"size_mib": mib, "patch_bytes": (d / "patch").stat().st_size,
                       "diff": "whole" if whole else "tail+stitch", "diff_s": round(diff_s, 2), "impl": impl,
                       "apply_s": round(r["seconds"], 3), "vmhwm_mib": round(r["hwm_kib"] / 1024, 1),
                       "peak_above_interpreter_mib": round((r["hwm_kib"] - r["base_rss_kib"]) / 1024, 1),
                       "peak_x_old_plus_new": round((r["hwm_kib"] - r["base_rss_kib"]) * 1024 / both, 2),
                       "interpreter_rss_mib": round(r["base_rss_kib"] / 1024, 1)}
                if impl == "stream":
                    row["own_anon_peak_mib"] = round(r["anon_peak_kib"] / 1024, 1)
                rows.append(row)
                ds = f"{diff_s:.1f}" + ("" if whole else "*")
                print(f"{mib:>5}{row['patch_bytes'] / 1024:>11.1f}{ds:>9}  {impl:8}{r['seconds']:>9.2f}"
                      f"{row['vmhwm_mib']:>11.1f}{row['peak_above_interpreter_mib']:>15.1f}"
                      f"{row['peak_x_old_plus_new']:>12.2f}x{row.get('own_anon_peak_mib', '-'):>14}")
                (d / "out").unlink(missing_ok=True)
    print(f"(* diffed over the changed tail only and stitched, see --diff-cap. 'above interp.' = VmHWM minus the RSS "
          f"after imports ({rows[0]['interpreter_rss_mib'] if rows else 0} MiB); for stream it includes the mmap'ed old "
          f"model's file pages, which the kernel can drop; 'own anon' is stream's sampled anonymous memory above the "
          f"interpreter, what it really needs; bsdiff4.patch holds the GIL, so only VmHWM sees its peak)")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
