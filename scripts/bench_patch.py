#!/usr/bin/env python3
"""Patch time and peak memory as the model grows.

    .venv/bin/python scripts/bench_patch.py [--sizes 1,10,50,100,200] [--encrypt]

Each size runs in a fresh child process that applies the delta the way the updater does
(edgeagent.update.patch.apply_delta: hash the base, stream the patch to disk, fsync, verify), and
reports its peak RSS (VmHWM) and, at the end, its anonymous memory and file pages. The "new"
model changes 5% of the bytes in its last tenth, like a fine-tuned head. The deltas are built by
the publisher's in-place path (edgeagent.update.delta, the same BSDIFF4 format bsdiff4.diff
writes; `--diff bsdiff4` builds them with bsdiff4.diff instead, slow above 50 MiB).

--encrypt: the same delta, and the whole new model, encrypted with age (update/encryption.py) to
a device identity; the child decrypts while it patches (three decrypting streams) or while it
copies into the slot, as the updater does for `signed.payload.encryption`.
"""

from __future__ import annotations

import argparse
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
import json, sys, time
from pathlib import Path
from edgeagent.update.patch import apply_delta, copy_full
d = Path(sys.argv[1]); mode = sys.argv[2]; meta = json.loads((d / "meta.json").read_text())
ident = None
if mode != "plain":
    from edgeagent.update.encryption import Identity
    ident = Identity.load(d / "identity")
t = time.perf_counter()
if mode == "age-full":
    copy_full(d / "new.age", d / "out", target_sha256=meta["new_sha"], target_size=meta["size"], identity=ident)
else:
    apply_delta(d / "old", meta["old_sha"], d / ("patch.age" if ident else "patch"), d / "out",
                target_sha256=meta["new_sha"], target_size=meta["size"], identity=ident, plain_size=meta["patch_size"])
dt = time.perf_counter() - t
st = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.split(":")[0] in ("VmHWM", "RssAnon", "RssFile")}
print(json.dumps({"seconds": dt, "peak_kib": st["VmHWM"], "anon_kib": st["RssAnon"], "file_kib": st["RssFile"]}))
"""


def main() -> int:
    import bsdiff4
    import numpy as np

    from edgeagent.update.delta import inplace_delta

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,10,50,100,200", help="MiB")
    ap.add_argument("--diff", choices=("inplace", "bsdiff4"), default="inplace", help="how the deltas are built")
    ap.add_argument("--encrypt", action="store_true", help="also: the delta and the full model, age-encrypted")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    base_rss = None
    modes = ["plain", "age-delta", "age-full"] if a.encrypt else ["plain"]
    print(f"{'size MiB':>9}{'payload':>10}{'patch KiB':>11}{'diff s':>8}{'apply s':>9}{'peak RSS':>10}{'anon MiB':>12}"
          f"{'file MiB':>12}")
    for mib in [int(x) for x in a.sizes.split(",")]:
        n = mib << 20
        old = rng.standard_normal(n // 4).astype(np.float32).tobytes()
        new = bytearray(old)
        tail = n - n // 10
        idx = rng.choice(np.arange(tail, n - 4, 4), size=max(1, n // 20 // 4), replace=False)
        for i in idx:
            new[i:i + 4] = rng.standard_normal(1).astype(np.float32).tobytes()
        new = bytes(new)
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as td:
            d = Path(td)
            (d / "old").write_bytes(old)
            (d / "new").write_bytes(new)
            t = time.perf_counter()
            if a.diff == "bsdiff4":
                (d / "patch").write_bytes(bsdiff4.diff(old, new))
            else:
                inplace_delta(d / "old", d / "new", d / "patch")
            diff_s = time.perf_counter() - t
            psize = (d / "patch").stat().st_size
            if a.encrypt:
                from edgeagent.update.encryption import encrypt_file, generate_identity

                rcpt = generate_identity(d / "identity")
                encrypt_file(d / "patch", d / "patch.age", [rcpt])
                encrypt_file(d / "new", d / "new.age", [rcpt])
            (d / "new").unlink()
            (d / "meta.json").write_text(json.dumps({"old_sha": hashlib.sha256(old).hexdigest(), "patch_size": psize,
                                                     "new_sha": hashlib.sha256(new).hexdigest(), "size": n}))
            del old, new
            results = []
            for mode in modes:
                (d / "out").unlink(missing_ok=True)
                results.append((mode, json.loads(subprocess.run([sys.executable, "-c", CHILD, str(d), mode],
                                                                capture_output=True, text=True, check=True,
                                                                cwd=REPO).stdout)))
        if base_rss is None:
            base_rss = json.loads(subprocess.run([sys.executable, "-c", "import json, edgeagent.update.patch;"
                                                  "print(json.dumps(int([l for l in open('/proc/self/status') if l.startswith('RssAnon')][0].split()[1])))"],
                                                 capture_output=True, text=True, cwd=REPO).stdout)
        for mode, r in results:
            peak = r["peak_kib"] / 1024
            anon = (r["anon_kib"] - base_rss) / 1024
            rows.append({"size_mib": mib, "payload": mode, "patch_bytes": psize, "diff_s": round(diff_s, 2),
                         "patch_s": round(r["seconds"], 3), "peak_rss_mib": round(peak, 1),
                         "anon_above_interpreter_mib": round(anon, 1), "file_pages_mib": round(r["file_kib"] / 1024, 1)})
            print(f"{mib:>9}{mode:>10}{psize / 1024:>11.1f}{diff_s:>8.1f}{r['seconds']:>9.2f}{peak:>10.1f}{anon:>12.1f}"
                  f"{r['file_kib'] / 1024:>12.1f}")
    print(f"(anon: the process's own memory above its imports, {base_rss / 1024:.1f} MiB; file: mapped libraries)")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
