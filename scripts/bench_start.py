#!/usr/bin/env python3
"""Start-up and CLI costs: time from exec to READY=1, and `edgeagent status` (human and --json).

    .venv/bin/python scripts/bench_start.py [--runs 100] [--rss-runs 5] [--mqtt] [--first-starts 5]
                                            [--instructions]

After the runs, one more daemon (a state of its own) takes a signed delta update through the
control socket (`edgeagent install`, live): its RSS 3 s after READY and 3 s after the update
committed, for what the first update leaves loaded (the installer, the verifier with
cryptography, bsdiff4, the health check's parent side).

The floor: a process that does only what serving needs (imports numpy and LiteRT, loads the same
model, invokes it once on a frame, sends READY=1), started the same way, with one OpenBLAS
thread as edgeagent sets for itself. Each run is a pair, a floor start and a daemon start back to
back, taking turns to go first; the ratio is the median of the pairs' ratios. The daemon is
started as the unit starts it, through the console script's lines. The daemon's RSS is read 3 s
after READY (its control plane built), and with --mqtt the daemon connects to a private
mosquitto (paho, TLS library and all).

The first run is a first start (an empty state: model.initial is checked in the health child,
then seeded); the median is over the others, and --first-starts more first starts, each in a
state of its own, are timed after them. Each run starts the real daemon (synthetic input at
30 Hz, a small conv model) with a NOTIFY_SOCKET of our own and times READY=1 from the exec
(READY used to wait for the main loop's next 50 ms poll after the first frame; now the
inference thread wakes it). On the first --rss-runs starts after the first, the daemon is
kept for 3 s, its RSS read, and `edgeagent status` and `status --json` run against it once; the
others are stopped at READY. Run it from another checkout to compare versions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

# The daemon and the CLI as installed: the console script's own lines (the unit's ExecStart is the
# console script; `python -m edgeagent` would add runpy's imports), run from this checkout, which
# python -c puts first on sys.path, so a bench_start.py in another checkout measures that one.
EDGEAGENT = [sys.executable, "-c", "import sys; from edgeagent.cli.main import main; sys.exit(main())"]

FLOOR = r"""
import os, socket, sys
import numpy as np
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=len(os.sched_getaffinity(0)))
it.allocate_tensors()
d = it.get_input_details()[0]
it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
it.invoke()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
import time; time.sleep(30)
"""


# --instructions: both counted to READY=1 under callgrind, a figure this VM's speed does not move.
# Each exits at READY=1 so that callgrind writes its count: the floor right after sending it, the
# daemon from its notifier, which this wrapper replaces before main() runs.
FLOOR_EXIT = FLOOR.replace("import time; time.sleep(30)", "os._exit(0)")
EXIT_AT_READY = ("import os, sys\n"
                 "import edgeagent.service.sdnotify as sn\n"
                 "sn.Notifier.ready = lambda self, *a, **k: os._exit(0)\n"
                 "from edgeagent.cli.main import main\n"
                 "sys.exit(main())\n")


def instructions(cmd: list[str], out: Path, env: dict) -> int:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # the floor's READY=1 needs a receiver
    srv.bind(str(out.with_suffix(".sock")))
    try:
        r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd], cwd=REPO,
                           env=dict(env, NOTIFY_SOCKET=str(out.with_suffix(".sock"))), capture_output=True,
                           text=True, timeout=900)
    finally:
        srv.close()
    m = re.search(r"Collected : (\d+)", r.stderr)
    if m is None:
        raise SystemExit(f"callgrind gave no count: {r.stderr[-1000:]}")
    return int(m.group(1))


def time_ready(cmd: list[str], sock_path: Path, env: dict) -> tuple[float, subprocess.Popen]:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(sock_path))
    srv.settimeout(30)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, env=dict(env, NOTIFY_SOCKET=str(sock_path)), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        while "READY=1" not in srv.recv(4096).decode():
            pass
        return time.perf_counter() - t0, p
    finally:
        srv.close()
        sock_path.unlink()


def time_floor(model: Path, sock_path: Path, env: dict) -> float:
    dt, p = time_ready([sys.executable, "-c", FLOOR, str(model)], sock_path, env)
    p.kill()
    p.wait()
    return dt


def rss_after_update(tmp: Path, model: Path, extra: dict) -> tuple[float, float, object]:
    """RSS of a fresh daemon 3 s after READY, and 3 s after a signed delta update to v2 committed."""
    import psutil

    from edgeagent.update.keys import generate_keypair
    from edgeagent.update.release import make_release

    d = tmp / "update-run"
    d.mkdir()
    generate_keypair(d / "keys")
    v2 = testmodels.write_model(d / "v2.tflite", kind="conv", input_shape=(1, 64, 64, 3), seed=2)
    rel = make_release(keys=[str(d / "keys/edgeagent.key")], target=v2, base=model, model="testmodel", version=2,
                       out_dir=d / "rel")
    cfg = write_config(d / "config.toml", base_config(d, model, input={"rate_hz": 30.0},
                                                      update={"trusted_keys": [str(d / "keys/edgeagent.pub")]}, **extra))
    sock_path = d / "notify.sock"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    dt, p = time_ready([*EDGEAGENT, "-c", str(cfg), "run"], sock_path, env)
    try:
        time.sleep(3)
        before = psutil.Process(p.pid).memory_info().rss / 2**20
        subprocess.run([*EDGEAGENT, "-c", str(cfg), "install", rel["manifest"]], cwd=REPO,
                       env=env, capture_output=True, check=True, timeout=120)
        version = None
        for _ in range(300):  # committed: v2 active and no trial
            st = json.loads(subprocess.run([*EDGEAGENT, "-c", str(cfg), "status", "--json"],
                                           cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout)
            version = (st.get("model") or {}).get("version")
            if version == 2 and not st.get("trial"):
                break
            time.sleep(0.2)
        time.sleep(3)
        after = psutil.Process(p.pid).memory_info().rss / 2**20
    finally:
        p.terminate()
        p.wait(15)
    return before, after, version


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100, help="floor/daemon pairs")
    ap.add_argument("--rss-runs", type=int, default=5, help="runs whose daemon is kept 3 s for RSS and status")
    ap.add_argument("--mqtt", action="store_true", help="the daemon connects to a private mosquitto")
    ap.add_argument("--first-starts", type=int, default=5, help="first starts, each in an empty state")
    ap.add_argument("--instructions", action="store_true",
                    help="also count both sides' CPU instructions to READY=1 under callgrind (needs valgrind)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-start-"))
    model = testmodels.write_model(tmp / "m.tflite", kind="conv", input_shape=(1, 64, 64, 3))
    broker = None
    extra = {}
    if a.mqtt:
        from tests.support.broker import Broker

        broker = Broker(tmp / "broker").start()
        extra["mqtt"] = {"host": "127.0.0.1", "port": broker.port}
    cfg = write_config(tmp / "config.toml", base_config(tmp, model, input={"rate_hz": 30.0}, **extra))
    ready_s, human_s, json_s, floor_s, rss_mb = [], [], [], [], []
    # the floor gets the OpenBLAS setting edgeagent gives itself (one thread unless set): without it
    # numpy's thread pool spins up at import and the floor would carry a cost the daemon avoids
    env0 = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    for i in range(a.runs):  # a floor start and a daemon start in each pair, taking turns to go first
        if i % 2 == 0:
            floor_s.append(time_floor(model, tmp / f"floor-{i}.sock", env0))
        sock_path = tmp / f"notify-{i}.sock"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        srv.bind(str(sock_path))
        srv.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONPATH=str(REPO))
        t0 = time.perf_counter()
        p = subprocess.Popen([*EDGEAGENT, "-c", str(cfg), "run"], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                msg = srv.recv(4096).decode()
                if "READY=1" in msg:
                    ready_s.append(time.perf_counter() - t0)
                    break
            if 1 <= i <= a.rss_runs:  # the others stop at READY, so many pairs take little time
                time.sleep(3)
                import psutil

                rss_mb.append(psutil.Process(p.pid).memory_info().rss / 2**20)
                for args, out in ((["status"], human_s), (["status", "--json"], json_s)):
                    t = time.perf_counter()
                    subprocess.run([*EDGEAGENT, "-c", str(cfg), *args], cwd=REPO, env=env,
                                   capture_output=True, check=True)
                    out.append(time.perf_counter() - t)
        finally:
            p.terminate()
            p.wait(15)
            srv.close()
            sock_path.unlink()
        if i % 2 == 1:
            floor_s.append(time_floor(model, tmp / f"floor-{i}.sock", env0))
    first_s = []
    for i in range(a.first_starts):  # each in a state of its own
        d = tmp / f"first-{i}"
        d.mkdir()
        cfg_i = write_config(d / "config.toml", base_config(d, model, input={"rate_hz": 30.0}, **extra))
        dt, p = time_ready([*EDGEAGENT, "-c", str(cfg_i), "run"], d / "notify.sock",
                           dict(os.environ, PYTHONPATH=str(REPO)))
        first_s.append(dt)
        p.terminate()
        p.wait(15)
    counted = None
    if a.instructions:  # after the runs: the state is seeded, as for every run but the first
        env = dict(os.environ, PYTHONPATH=str(REPO))
        counted = (instructions([*EDGEAGENT[:2], EXIT_AT_READY, "-c", str(cfg), "run"], tmp / "cg-daemon", env),
                   instructions([sys.executable, "-c", FLOOR_EXIT, str(model)], tmp / "cg-floor", env0))
    upd = rss_after_update(tmp, model, extra)
    if broker is not None:
        broker.stop()
    med = statistics.median
    later = ready_s[1:] or ready_s  # the first run seeded the state (its model.initial check: below)
    # the ratio of each pair, started back to back: the VM's speed drifts by more than the
    # difference between the two over a run, and a pair shares the moment it ran in
    pairs = sorted(d / f for d, f in zip(ready_s[1:], floor_s[1:])) or [ready_s[0] / floor_s[0]]
    print(f"exec -> READY=1: median {med(later) * 1e3:.0f} ms (min {min(later) * 1e3:.0f}, "
          f"max {max(later) * 1e3:.0f}) over {len(later)} starts; the floor process {med(floor_s) * 1e3:.0f} ms; "
          f"ratio {med(pairs):.2f}x, the median of {len(pairs)} pairs (quartiles {pairs[len(pairs) // 4]:.2f}-"
          f"{pairs[3 * len(pairs) // 4]:.2f}x; the ratio of the medians {med(later) / med(floor_s):.2f}x)")
    print(f"a first start (an empty state: model.initial checked in the health child, then seeded): median "
          f"{med(first_s) * 1e3:.0f} ms over {len(first_s)}")
    print(f"daemon RSS 3 s after READY: median {med(rss_mb):.1f} MiB{' (with MQTT)' if a.mqtt else ''}")
    print(f"one daemon: RSS {upd[0]:.1f} MiB 3 s after READY, {upd[1]:.1f} MiB 3 s after a signed delta update "
          f"committed (v{upd[2]})")
    print(f"edgeagent status: median {med(human_s) * 1e3:.0f} ms; status --json: median {med(json_s) * 1e3:.0f} ms")
    if counted is not None:
        print(f"instructions to READY=1 (callgrind): the daemon {counted[0] / 1e6:.0f} M, the floor "
              f"{counted[1] / 1e6:.0f} M (ratio {counted[0] / counted[1]:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
