#!/usr/bin/env python3
"""False rollbacks under load: good updates must commit, slow ones must not.

    .venv/bin/python scripts/bench_false_rollback.py [--runs 20] [--busy 2] [--rates 0,30] [--probation 3]

Starts --busy CPU-bound processes (a busy device: 2 of them fill this machine's 2 cores), then for
each rate runs --runs fresh daemons, each serving a base model, and sends each one a good update: a
faster retrain of the base (fewer layers, same input and output). Then --runs updates to a model
about 2.5x slower than the base. Each outcome is read from the daemon's own events: committed,
rolled back (probation) or refused (pre-switch health check), with the paired figures behind it.
Goal: 0 good updates rolled back or refused; every slow one stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeagent.engine import testmodels  # noqa: E402
from edgeagent.errors import EdgeAgentError  # noqa: E402
from edgeagent.update.keys import generate_keypair  # noqa: E402
from edgeagent.update.release import make_release  # noqa: E402
from tests.support.daemon import Daemon, base_config  # noqa: E402

SHAPE = (1, 64)
BASE, FASTER, SLOWER = 2, 1, 5  # testmodels `slow` layers (8, 4, 20 of 1024x1024): ~1.2, ~0.6, ~4.4 ms here


def one_run(tmp: Path, n: int, rate: float, target: Path, rel: dict, probation: float) -> dict:
    cfg = base_config(tmp, tmp / "base.tflite", input={"rate_hz": rate},
                      model={"name": "testmodel", "state_dir": str(tmp / f"state{n}"), "initial": str(tmp / "base.tflite")},
                      control={"socket": str(tmp / f"c{n}.sock")},
                      update={"trusted_keys": [str(tmp / "k/edgeagent.pub")], "probation_s": probation,
                              "min_inferences": 20})
    d = Daemon(tmp, cfg, name=f"run{n}").start()
    try:
        time.sleep(1.0)  # the base model serves for a moment, as on a device
        args = {"manifest": json.loads(Path(rel["manifest"]).read_text()), "payload_url": Path(rel["payload"]).as_uri()}
        try:
            r = d.call("update", args, timeout=120)
        except EdgeAgentError as e:
            return {"outcome": "refused", "reason": e.message[:160]}
        health = r.get("health") or {}
        deadline = time.monotonic() + probation + 60
        while time.monotonic() < deadline:
            for e in d.call("status")["events"]:
                if e["event"] == "update.committed":
                    return {"outcome": "committed", "reason": e["reason"], "health_factor": health.get("factor"),
                            "before": e["before"], "after": e["after"]}
                if e["event"] == "update.rolled_back":
                    return {"outcome": "rolled back", "reason": e["reason"][:160], "health_factor": health.get("factor")}
            time.sleep(0.2)
        return {"outcome": "undecided", "reason": "no verdict in time"}
    finally:
        d.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside the daemon")
    ap.add_argument("--rates", default="0,30", help="input rates to test the good update at (0 = flat out)")
    ap.add_argument("--probation", type=float, default=3.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fr-"))
    generate_keypair(tmp / "k")
    base = testmodels.write_model(tmp / "base.tflite", input_shape=SHAPE, slow=BASE, seed=1)
    faster = testmodels.write_model(tmp / "faster.tflite", input_shape=SHAPE, slow=FASTER, seed=1, version_tag=2)
    slower = testmodels.write_model(tmp / "slower.tflite", input_shape=SHAPE, slow=SLOWER, seed=1, version_tag=2)
    key = [str(tmp / "k/edgeagent.key")]
    rel_fast = make_release(keys=key, target=faster, base=base, model="testmodel", version=2, out_dir=tmp / "rel-fast")
    rel_slow = make_release(keys=key, target=slower, base=base, model="testmodel", version=2, out_dir=tmp / "rel-slow")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy)]
    results: dict[str, list] = {}
    n = 0
    try:
        plan = [(f"good @ {r} Hz", float(r), faster, rel_fast) for r in a.rates.split(",")]
        plan.append(("2.5x slower @ 0 Hz", 0.0, slower, rel_slow))
        for label, rate, target, rel in plan:
            rows = results[label] = []
            for _ in range(a.runs):
                n += 1
                rows.append(one_run(tmp, n, rate, target, rel, a.probation))
                print(f"{label:<20} run {len(rows):>2}: {rows[-1]['outcome']:<12} {rows[-1]['reason'][:110]}",
                      file=sys.stderr, flush=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    print(f"{a.busy} busy processes on {__import__('os').cpu_count()} cores, probation {a.probation:g} s, "
          f"{a.runs} runs each")
    print(f"{'case':<22}{'committed':>10}{'rolled back':>13}{'refused':>9}{'other':>7}")
    for label, rows in results.items():
        c = [r["outcome"] for r in rows]
        print(f"{label:<22}{c.count('committed'):>10}{c.count('rolled back'):>13}{c.count('refused'):>9}"
              f"{len(c) - c.count('committed') - c.count('rolled back') - c.count('refused'):>7}")
    for label, rows in results.items():
        ratios = [r["before"]["invoke_p50_ms"] and r["after"]["invoke_p50_ms"] / r["before"]["invoke_p50_ms"]
                  for r in rows if r["outcome"] == "committed"]
        factors = [r["health_factor"] for r in rows if r.get("health_factor")]
        if ratios:
            print(f"{label}: after/before invoke p50 (paired) median {sorted(ratios)[len(ratios) // 2]:.2f}")
        if factors:
            print(f"{label}: health-check paired factor median {sorted(factors)[len(factors) // 2]:.2f}")
    if a.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
