#!/usr/bin/env python3
"""How long `edgeagent rollout start` takes to know a large fleet, and from how many devices it
sizes its first step.

    .venv/bin/python scripts/bench_rollout_start.py [--devices 400] [--rounds 3]

A real mosquitto on a free loopback port holds N simulated devices' retained `P/status` (online,
in group `bench`) and `P/rollout` (a result of an earlier rollout), published by this script, while
a second client publishes every device's telemetry once a second, so the broker is never quiet.
Each round runs `edgeagent rollout start --detach` as a user would (a fresh process: Python start
and imports included) and reads how many devices it knew ("(N devices known)") and its wall time;
then aborts the rollout. The same is reported for the read alone (in-process: connect, subscribe,
read the retained messages).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeagent.update.keys import generate_keypair  # noqa: E402
from tests.support.broker import Broker  # noqa: E402


def main() -> int:
    import paho.mqtt.client as mqtt

    from edgeagent.engine import testmodels
    from edgeagent.fleet.controller import RolloutController
    from edgeagent.transport.client import MqttClient
    from edgeagent.update.release import make_release

    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        broker = Broker(tmp / "broker").start()
        stop = threading.Event()
        try:
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-devices", protocol=mqtt.MQTTv5)
            pub.max_queued_messages_set(0)
            pub.max_inflight_messages_set(1000)
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            ids = [f"dev{i:04d}" for i in range(a.devices)]
            infos = []
            for d in ids:
                status = {"state": "online", "device": d, "groups": ["bench"], "agent": "bench",
                          "model": {"name": "bench", "version": 1, "slot": "a"}}
                infos.append(pub.publish(f"edgeagent/{d}/status", json.dumps(status), qos=1, retain=True))
                result = {"rollout": "r-old", "group": "bench", "version": 1, "result": "committed", "ts": time.time()}
                infos.append(pub.publish(f"edgeagent/{d}/rollout", json.dumps(result), qos=1, retain=True))
            for i in infos:
                i.wait_for_publish(30)

            def noise() -> None:  # every device's telemetry, once a second, spread over the second
                n = 0
                while not stop.is_set():
                    for d in ids:
                        pub.publish(f"edgeagent/{d}/telemetry", json.dumps({"seq": n, "device": d,
                                                                            "inference": {"fps": 10.0}}), qos=0)
                        if stop.wait(1.0 / len(ids)):
                            return
                    n += 1

            threading.Thread(target=noise, daemon=True).start()
            time.sleep(1.5)

            reads = []
            for _ in range(a.rounds):
                t0 = time.perf_counter()
                c = MqttClient("127.0.0.1", broker.port)
                ctl = RolloutController(c, "bench")
                ctl.load()
                dt = time.perf_counter() - t0
                known = len(ctl.view.in_group("bench"))
                reads.append((dt, known, c.settled_by_marker))
                c.close()

            generate_keypair(tmp / "k")
            v = testmodels.write_model(tmp / "v2.tflite", kind="dense", input_shape=(1, 16), outputs=4, version_tag=2)
            rel = make_release(keys=[str(tmp / "k/edgeagent.key")], target=v, base=None, model="bench", version=2,
                               out_dir=tmp / "rel")
            starts = []
            for r in range(a.rounds):
                rid = f"bench-{r}"
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "edgeagent", "rollout", "start", rel["manifest"],
                                      "--group", "bench", "--payload-url", "http://127.0.0.1:9/none", "--id", rid,
                                      "--detach", "--broker", f"127.0.0.1:{broker.port}"],
                                     cwd=REPO, capture_output=True, text=True, timeout=120)
                dt = time.perf_counter() - t0
                m = re.search(r"\((\d+) devices known\)", out.stdout + out.stderr)
                starts.append((dt, int(m.group(1)) if m else None))
                subprocess.run([sys.executable, "-m", "edgeagent", "rollout", "abort", rid, "--broker",
                                f"127.0.0.1:{broker.port}"], cwd=REPO, capture_output=True, timeout=120)
        finally:
            stop.set()
            broker.stop()
    print(f"{a.devices} devices with retained status and results, telemetry from each every second")
    for dt, known, marker in reads:
        print(f"  retained read (in process): {dt:.3f} s, {known} devices known"
              f"{'' if marker else ' (ended on quiet: no marker)'}")
    for dt, known in starts:
        print(f"  rollout start --detach (a fresh process): {dt:.2f} s, sized from {known} devices")
    print(json.dumps({"devices": a.devices, "read_s": [round(x[0], 3) for x in reads],
                      "read_known": [x[1] for x in reads], "start_s": [round(x[0], 2) for x in starts],
                      "start_known": [x[1] for x in starts],
                      "start_median_s": round(statistics.median(x[0] for x in starts), 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
