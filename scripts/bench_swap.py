#!/usr/bin/env python3
"""The largest gap between two frames during a live update (hot swap) against the frame period.

    .venv/bin/python scripts/bench_swap.py [--rate 30] [--updates 5]

Runs the real daemon at --rate Hz (0: flat out) on a conv model, installs --updates signed deltas
over the control socket, and reads the loop's own figures from telemetry: max_gap_ms per window
and the deadline-miss counter. The window holding the swap is compared with the quiet windows
before it. (scripts/bench_swap_gap.py measures the same in-process from every frame's stamp, and
the frames served during a health check.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeagent.engine import testmodels  # noqa: E402
from edgeagent.update.keys import generate_keypair  # noqa: E402
from edgeagent.update.release import make_release  # noqa: E402
from tests.support.daemon import Daemon, base_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=30.0, help="input rate in Hz; 0 = flat out")
    ap.add_argument("--updates", type=int, default=5)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    generate_keypair(tmp / "k")
    shape = (1, 128, 128, 3)
    v1 = testmodels.write_model(tmp / "v1.tflite", kind="conv", input_shape=shape, filters=32, seed=1)
    cfg = base_config(tmp, v1, input={"rate_hz": a.rate},
                      telemetry={"interval_s": 0.25, "sysfs_root": str(tmp / "nosys"), "power_profile": "none"},
                      update={"trusted_keys": [str(tmp / "k/edgeagent.pub")], "probation_s": 1.0, "min_inferences": 5})
    d = Daemon(tmp, cfg).start()
    rows = []
    try:
        time.sleep(2)
        base = v1
        for i in range(a.updates):
            ver = i + 2
            new = testmodels.write_model(tmp / f"v{ver}.tflite", kind="conv", input_shape=shape, filters=32, seed=1,
                                         version_tag=ver)
            rel = make_release(keys=[str(tmp / "k/edgeagent.key")], target=new, base=base, model="testmodel",
                               version=ver, out_dir=tmp / f"rel{ver}", base_version=ver - 1)
            gaps_before = []
            for _ in range(4):
                time.sleep(0.25)
                gaps_before.append(d.call("status")["telemetry"]["inference"]["max_gap_ms"])
            misses0 = d.call("status")["telemetry"]["inference"]["deadline_misses"]
            t0 = time.monotonic()
            d.call("update", {"manifest": json.loads(Path(rel["manifest"]).read_text()),
                              "payload_url": Path(rel["payload"]).as_uri()})
            t1 = time.monotonic()  # the update call returns once switched: download, patch, health check, swap
            swap_gaps = []
            while time.monotonic() - t0 < max(1.0, t1 - t0 + 0.6):
                time.sleep(0.25)
                swap_gaps.append(d.call("status")["telemetry"]["inference"]["max_gap_ms"])
            misses1 = d.call("status")["telemetry"]["inference"]["deadline_misses"]
            rows.append({"update": ver, "quiet_max_gap_ms": max(g for g in gaps_before if g),
                         "swap_max_gap_ms": max(g for g in swap_gaps if g), "deadline_misses": misses1 - misses0,
                         "install_s": round(t1 - t0, 2)})
            base = new
            time.sleep(1.5)  # let probation commit
    finally:
        d.stop()
    period_ms = 1000.0 / a.rate if a.rate else None
    print(f"frame period {period_ms:.1f} ms at {a.rate:g} Hz" if period_ms else "rate 0 (flat out)")
    print(f"{'update':>7}{'quiet max gap ms':>18}{'swap max gap ms':>17}{'deadline misses':>17}{'update s':>10}")
    for r in rows:
        print(f"{r['update']:>7}{r['quiet_max_gap_ms']:>18.1f}{r['swap_max_gap_ms']:>17.1f}{r['deadline_misses']:>17}"
              f"{r['install_s']:>10.2f}")
    worst = max(r["swap_max_gap_ms"] for r in rows)
    med = statistics.median
    print(f"worst gap around a swap: {worst:.1f} ms" + (f" = {worst / period_ms:.2f} x the frame period" if period_ms else "")
          + f"; median quiet max gap {med(r['quiet_max_gap_ms'] for r in rows):.1f} ms, median swap max gap "
          f"{med(r['swap_max_gap_ms'] for r in rows):.1f} ms")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
