#!/usr/bin/env python3
"""`make demo`: every part of edgeagent working together on this machine, in about a minute,
with no root. Needs `mosquitto` on PATH (Debian: apt-get install mosquitto).

It makes a signing key and three versions of a demo model, starts a private broker on a free
loopback port and the daemon on a camera (a video file it writes), shows live telemetry,
publishes a signed delta update over MQTT with the project's own release tooling, shows the
events through verify, trial and commit, shows the slots, rolls back, then pushes a model that
goes bad in service (NaN outputs after a warm-up) and shows the automatic rollback and the slot
marked bad. It stops everything it started, and exits non-zero if any step does not happen.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from tests.support import tomlw  # noqa: E402  (the same tiny TOML writer the tests use)

EDGEAGENT = [sys.executable, "-m", "edgeagent"]


class DemoFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    def __init__(self, work: Path, verbose: bool) -> None:
        self.work = work
        self.verbose = verbose
        self.procs: list[subprocess.Popen] = []
        self.step_no = 0
        self.inbox: queue.Queue = queue.Queue()
        self.client = None

    # -- output ------------------------------------------------------------------------------
    def step(self, title: str) -> None:
        self.step_no += 1
        print(f"\n[{self.step_no}/9] {title}", flush=True)

    def say(self, text: str) -> None:
        print(f"      {text}", flush=True)

    def cli(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([*EDGEAGENT, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
        if check and r.returncode != 0:
            raise DemoFailed(f"edgeagent {' '.join(args[:3])} failed ({r.returncode}): {r.stderr.strip()[-400:]}")
        return r.stdout

    # -- processes ---------------------------------------------------------------------------
    def start(self, argv: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
        fh = open(self.work / log, "wb")
        p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})})
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)

    # -- MQTT watcher ------------------------------------------------------------------------
    def watch(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-watcher")
        c.on_message = lambda cl, u, m: self.inbox.put((m.topic, m.payload))
        c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe([(f"{prefix}/#", 1)])
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def wait_for(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                topic, payload = self.inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                body = json.loads(payload)
            except ValueError:
                continue
            if topic.endswith("/events") and self.verbose:
                self.say(f"(event {body.get('event')})")
            if pred(topic, body):
                return body
        raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")

    def wait_event(self, name: str, timeout: float = 60, **match) -> dict:
        return self.wait_for(lambda t, b: t.endswith("/events") and b.get("event") == name
                             and all(b.get(k) == v for k, v in match.items()), timeout, f"event {name}")

    # -- the story ---------------------------------------------------------------------------
    def run(self) -> None:
        from edgeagent.engine import testmodels

        w = self.work
        self.step("a signing key (edgeagent keygen)")
        keyid = self.cli("keygen", "--out", str(w / "keys")).strip().split()[-1]
        self.say(f"key id {keyid[:16]}…  private key {w / 'keys/edgeagent.key'} (0600)")

        self.step("three versions of a demo model, and a camera (a video file)")
        shape = (1, 48, 48, 3)
        v1 = testmodels.write_model(w / "demo-v1.tflite", kind="conv", input_shape=shape, outputs=8, seed=7)
        v2 = testmodels.write_model(w / "demo-v2.tflite", kind="conv", input_shape=shape, outputs=8, seed=7, version_tag=2)
        v3 = testmodels.write_model(w / "demo-v3.tflite", kind="conv", input_shape=shape, outputs=8, seed=7,
                                    version_tag=3, nan_after=60)
        self.say(f"v1 {v1.stat().st_size} bytes; v2 retrains a constant; v3 produces NaN after 60 inferences")
        video = self.make_video(w / "camera.avi")
        self.say(f"camera: {video.name}, 48 frames of a moving pattern, looped")

        self.step("a private MQTT broker")
        port = free_port()
        (w / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = self.start(["mosquitto", "-c", str(w / "mosquitto.conf")], "mosquitto.log")
        self.wait_port(port, broker)
        self.say(f"mosquitto on 127.0.0.1:{port}")

        self.step("the daemon (edgeagent run)")
        device = "demo-device"
        prefix = f"edgeagent/{device}"
        cfg = {
            "device": {"id": device},
            "mqtt": {"host": "127.0.0.1", "port": port},
            "model": {"name": "demo", "state_dir": str(w / "state"), "initial": str(v1)},
            "input": {"source": "camera", "rate_hz": 20.0, "camera": {"device": str(video)}},
            "telemetry": {"interval_s": 1.0, "power_profile": "generic"},
            "update": {"trusted_keys": [str(w / "keys/edgeagent.pub")], "probation_s": 4.0, "min_inferences": 20},
            "control": {"socket": str(w / "control.sock")},
        }
        (w / "config.toml").write_text(tomlw.dumps(cfg))
        self.config = str(w / "config.toml")
        self.watch(port, prefix)
        daemon = self.start([*EDGEAGENT, "-c", self.config, "run"], "daemon.log")
        st = self.wait_for(lambda t, b: t.endswith("/status") and b.get("state") == "online", 60, "the daemon's birth message")
        m = st.get("model") or {}
        self.say(f"{prefix}/status: online, serving {m.get('name')} v{m.get('version')} from slot {m.get('slot')}")

        self.step("live telemetry (P/telemetry)")
        for _ in range(3):
            t = self.wait_for(lambda tp, b: tp.endswith("/telemetry") and (b.get("inference") or {}).get("fps"), 20, "telemetry")
            inf, p = t["inference"], t.get("power") or {}
            if p.get("total_w") is not None:
                power = f"power {p['total_w']:.2f} W ({p.get('source')})"
            else:  # no sensor here: the agent's own share, an estimate
                power = f"agent power ~{p.get('agent_w') or 0:.2f} W ({p.get('source')})"
            self.say(f"seq {t['seq']}: {inf['fps']:.1f} fps, p50 {inf['latency_ms']['p50']:.2f} ms, "
                     f"p99 {inf['latency_ms']['p99']:.2f} ms, cpu {t['system']['agent_cpu_percent']:.0f}%, {power}")

        self.step("a signed delta update to v2 over MQTT (edgeagent release + push)")
        out = json.loads(self.cli("release", "--key", str(w / "keys/edgeagent.key"), "--target", str(v2),
                                  "--base", str(v1), "--model", "demo", "--version", "2", "--out", str(w / "rel2"), "--json"))
        self.say(f"release: {out['kind']} payload {out['payload_size']} bytes for a {out['target_size']}-byte model")
        push = self.start([*EDGEAGENT, "push", out["manifest"], "--broker", f"127.0.0.1:{port}", "--device", device,
                           "--chunk-size", "1024"], "push2.log")
        for ev in ("update.received", "update.verified", "update.applied", "update.trial"):
            e = self.wait_event(ev, 60, version=2)
            self.say(f"{ev}" + (f" (slot {e.get('slot')})" if e.get("slot") else ""))
        e = self.wait_event("update.committed", 60, version=2)
        self.say(f"update.committed: {e.get('reason')}")
        if push.wait(30) != 0:
            raise DemoFailed("edgeagent push reported a failure: " + (w / "push2.log").read_text()[-300:])

        self.step("the slots (edgeagent slots)")
        for line in self.cli("-c", self.config, "slots").strip().splitlines():
            self.say(line)
        table = json.loads(self.cli("-c", self.config, "slots", "--json"))
        if table["active"] != "b" or [s["version"] for s in table["slots"]] != [1, 2]:
            raise DemoFailed(f"unexpected slots after the update: {table}")

        self.step("a manual rollback (edgeagent rollback)")
        self.say(self.cli("-c", self.config, "rollback").strip())
        self.wait_event("rollback", 20)
        status = json.loads(self.cli("-c", self.config, "status", "--json"))
        if status["model"]["version"] != 1:
            raise DemoFailed(f"after the rollback v{status['model']['version']} serves, not v1")
        self.say(f"serving v{status['model']['version']} from slot {status['model']['slot']} again")

        self.step("an update that goes bad in service: v3, NaN after warm-up")
        out = json.loads(self.cli("release", "--key", str(w / "keys/edgeagent.key"), "--target", str(v3),
                                  "--base", str(v1), "--model", "demo", "--version", "3", "--out", str(w / "rel3"), "--json"))
        self.start([*EDGEAGENT, "push", out["manifest"], "--broker", f"127.0.0.1:{port}", "--device", device],
                   "push3.log")
        self.wait_event("update.trial", 60, version=3)
        self.say("update.trial: v3 passed the pre-switch health check and serves on probation")
        e = self.wait_event("update.rolled_back", 60, version=3)
        self.say(f"update.rolled_back: {e.get('reason')}")
        table = json.loads(self.cli("-c", self.config, "slots", "--json"))
        bad = [s for s in table["slots"] if s["version"] == 3]
        if not bad or bad[0]["status"] != "bad":
            raise DemoFailed(f"v3's slot is not marked bad: {table}")
        status = json.loads(self.cli("-c", self.config, "status", "--json"))
        self.say(f"slot {bad[0]['slot']} marked bad; serving v{status['model']['version']} "
                 f"from slot {status['model']['slot']}")
        if status["model"]["version"] != 1:
            raise DemoFailed("the previous model is not serving after the automatic rollback")

        daemon.send_signal(signal.SIGTERM)
        if daemon.wait(15) != 0:
            raise DemoFailed(f"the daemon exited with {daemon.returncode}")
        self.wait_for(lambda t, b: t.endswith("/status") and b.get("reason") == "shutdown", 10, "the shutdown status")

    def make_video(self, path: Path) -> Path:
        import cv2

        wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (96, 72))
        yy, xx = np.mgrid[0:72, 0:96]
        for i in range(48):
            frame = np.stack([(xx * 2 + i * 5) % 256, (yy * 3 + i * 3) % 256, np.full_like(xx, (i * 11) % 256)], axis=-1)
            wr.write(frame.astype(np.uint8))
        wr.release()
        if not path.exists() or path.stat().st_size == 0:
            raise DemoFailed("OpenCV could not write the demo video")
        return path

    def wait_port(self, port: int, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoFailed("mosquitto exited: " + (self.work / "mosquitto.log").read_text()[-300:])
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise DemoFailed("mosquitto did not open its port")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, state) afterwards")
    ap.add_argument("--verbose", action="store_true", help="also print every event as it arrives")
    args = ap.parse_args()
    if shutil.which("mosquitto") is None:
        print("demo: mosquitto is not installed (Debian/Raspberry Pi OS: sudo apt-get install mosquitto)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="edgeagent-demo-"))
    print(f"edgeagent demo: working in {work}")
    demo = Demo(work, args.verbose)
    t0 = time.monotonic()
    try:
        demo.run()
    except (DemoFailed, subprocess.TimeoutExpired) as e:
        print(f"\ndemo FAILED at step {demo.step_no}: {e}", file=sys.stderr)
        print(f"logs: {work}", file=sys.stderr)
        demo.stop_all()
        return 1
    finally:
        demo.stop_all()
    print(f"\ndemo OK in {time.monotonic() - t0:.0f} s: stopped the daemon and the broker")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
