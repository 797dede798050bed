#!/usr/bin/env python3
"""What the control plane and telemetry cost: the agent's CPU time per second and RSS with
telemetry every 1 s over MQTT and inference at 10 Hz, against the same inference loop with MQTT
and telemetry off. Goal: under 1% of one core.

    .venv/bin/python scripts/bench_controlplane.py [--seconds 60] [--model M.tflite]

Needs mosquitto on PATH (a private broker is started on a free loopback port). Both daemons run
alternately in short rounds; CPU time is read from /proc through psutil.
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

import psutil  # noqa: E402

from edgeagent.engine import testmodels  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.daemon import Daemon, base_config  # noqa: E402

SHARED = REPO.parent / "shared/models/face_detection_short_range.tflite"


def measure(d: Daemon, seconds: float) -> tuple[float, float]:
    p = psutil.Process(d.proc.pid)
    time.sleep(2)  # settle
    t0, c0 = time.monotonic(), sum(p.cpu_times()[:2])
    time.sleep(seconds)
    t1, c1 = time.monotonic(), sum(p.cpu_times()[:2])
    return (c1 - c0) / (t1 - t0) * 100.0, p.memory_info().rss / (1 << 20)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cp-"))
    model = Path(a.model) if a.model else (SHARED if SHARED.exists() else
                                             testmodels.write_model(tmp / "m.tflite", kind="conv", input_shape=(1, 128, 128, 3)))
    broker = Broker(tmp / "broker").start()
    on = base_config(tmp / "on", model, input={"rate_hz": 10.0},
                     telemetry={"interval_s": 1.0, "power_profile": "generic"},
                     mqtt={"host": "127.0.0.1", "port": broker.port}, output={"publish": "summary"})
    off = base_config(tmp / "off", model, input={"rate_hz": 10.0},
                      telemetry={"interval_s": 3600.0, "power_profile": "none"}, output={"publish": "none"})
    for d in (tmp / "on", tmp / "off"):
        d.mkdir()
    results = {"on": [], "off": []}
    try:
        per = a.seconds / (2 * a.rounds)
        for _ in range(a.rounds):
            for name, cfg in (("on", on), ("off", off)):
                d = Daemon(tmp / name, cfg, name=name).start()
                try:
                    results[name].append(measure(d, per))
                finally:
                    d.stop()
    finally:
        broker.stop()
    cpu_on = statistics.median(r[0] for r in results["on"])
    cpu_off = statistics.median(r[0] for r in results["off"])
    rss_on = statistics.median(r[1] for r in results["on"])
    rss_off = statistics.median(r[1] for r in results["off"])
    print(f"model {model.name}, inference 10 Hz")
    print(f"{'':34}{'CPU % of a core':>16}{'RSS MiB':>9}")
    print(f"{'MQTT + telemetry every 1 s':34}{cpu_on:>16.2f}{rss_on:>9.1f}")
    print(f"{'MQTT and telemetry off':34}{cpu_off:>16.2f}{rss_off:>9.1f}")
    print(f"control plane + telemetry cost: {cpu_on - cpu_off:.2f}% of one core, {rss_on - rss_off:+.1f} MiB")
    print(json.dumps({"cpu_on": cpu_on, "cpu_off": cpu_off, "rss_on": rss_on, "rss_off": rss_off}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
