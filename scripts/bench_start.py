#!/usr/bin/env python3
"""Start-up and CLI costs: time from exec to READY=1, and `edgeagent status` (human and --json).

    .venv/bin/python scripts/bench_start.py [--runs 10]

Each run starts the real daemon (synthetic input at 30 Hz, a small conv model) with a
NOTIFY_SOCKET of our own and times READY=1 from the exec (READY used to wait for the main loop's
next 50 ms poll after the first frame; now the inference thread wakes it). Then `edgeagent
status` and `status --json` run once against each started daemon. Run it from another checkout
to compare versions.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeagent.engine import testmodels  # noqa: E402
from tests.support.daemon import base_config, write_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-start-"))
    model = testmodels.write_model(tmp / "m.tflite", kind="conv", input_shape=(1, 64, 64, 3))
    cfg = write_config(tmp / "config.toml", base_config(tmp, model, input={"rate_hz": 30.0}))
    ready_s, human_s, json_s = [], [], []
    for i in range(a.runs):
        sock_path = tmp / f"notify-{i}.sock"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        srv.bind(str(sock_path))
        srv.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONPATH=str(REPO))
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "edgeagent", "-c", str(cfg), "run"], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                msg = srv.recv(4096).decode()
                if "READY=1" in msg:
                    ready_s.append(time.perf_counter() - t0)
                    break
            for args, out in ((["status"], human_s), (["status", "--json"], json_s)):
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(cfg), *args], cwd=REPO, env=env,
                               capture_output=True, check=True)
                out.append(time.perf_counter() - t)
        finally:
            p.terminate()
            p.wait(15)
            srv.close()
            sock_path.unlink()
    med = statistics.median
    print(f"exec -> READY=1: median {med(ready_s) * 1e3:.0f} ms (min {min(ready_s) * 1e3:.0f}, "
          f"max {max(ready_s) * 1e3:.0f}) over {a.runs} starts")
    print(f"edgeagent status: median {med(human_s) * 1e3:.0f} ms; status --json: median {med(json_s) * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
