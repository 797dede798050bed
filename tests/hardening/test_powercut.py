"""Power cuts at random instants of an update, on a real ext4 filesystem (issue 19).

The daemon's state directory lives on ext4 in an image file behind a loop device created here.
Writeback of dirty pages is held back for the run (vm.dirty_expire_centisecs and
dirty_writeback_centisecs raised, restored after), so what a process wrote but did not fsync is
only in RAM, as it is on a device an instant before its power goes. A primary daemon takes a
chain of updates (full payloads over a throttled loopback HTTP server: download, write, health
child, trial, commit); at a random instant of each one it is frozen with SIGSTOP, the image as it
is on the "disk" is copied (the power cut), and the daemon thaws and goes on. Each copy is then
repaired with `e2fsck -fy`, every file under its staging/ is corrupted (nothing there may be
trusted without verification), and a new daemon boots on it. Asserted for every cut: it serves a
model whose file hashes to what state.json says, the anti-rollback high-water mark and every
commit the primary had acknowledged (its update.committed event had arrived) survived.
"""

from __future__ import annotations

import collections
import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edgeagent.control.client import ControlClient
from edgeagent.engine import testmodels
from edgeagent.update.keys import generate_keypair
from edgeagent.update.release import make_release
from tests.support.daemon import Daemon, base_config
from tests.support.loopfs import Mounted, make_image, need_root_and_loop

pytestmark = pytest.mark.long(seconds=90)

CUTS = 30
IMAGE_MB = 48
VM = Path("/proc/sys/vm")
HOLD = {"dirty_expire_centisecs": "360000", "dirty_writeback_centisecs": "360000"}


class Throttled(http.server.BaseHTTPRequestHandler):
    root: Path = Path(".")

    def log_message(self, *a):
        pass

    def do_GET(self):
        data = (self.root / self.path.lstrip("/")).read_bytes()
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(0, len(body), 64 * 1024):  # ~0.4 s for 1 MB: downloads get cut too
                self.wfile.write(body[i:i + 64 * 1024])
                time.sleep(0.025)
        except OSError:
            pass


class Events:
    """Every event of the primary, with the monotonic time it arrived."""

    def __init__(self, sock: str) -> None:
        self.items: list[tuple[float, dict]] = []
        self.cv = threading.Condition()
        self.c = ControlClient(sock, timeout=None)
        self.c.connect()
        self.c.call("events.subscribe")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.c._readline(None)
            except Exception:  # noqa: BLE001 - the primary stopped
                return
            if "event" in msg:
                with self.cv:
                    self.items.append((time.monotonic(), msg))
                    self.cv.notify_all()

    def wait(self, names: tuple[str, ...], version: int, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for _, e in self.items:
                    if e.get("event") in names and e.get("version") == version:
                        return e
                left = deadline - time.monotonic()
                assert left > 0, f"no {names} for v{version}: {[e for _, e in self.items][-5:]}"
                self.cv.wait(left)

    def before(self, t: float) -> list[dict]:
        with self.cv:
            return [e for at, e in self.items if at < t]


def _check_copy(i: int, tmp: Path, image: Path, cfg_base: dict, acked: int, high_water: int) -> dict:
    """e2fsck, corrupt staging, boot, check; returns what the booted daemon serves."""
    fsck = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, text=True)
    assert fsck.returncode in (0, 1, 2), f"cut {i}: e2fsck could not repair the image: {fsck.stdout[-800:]}"
    m = Mounted(image, tmp / f"m{i}")
    d = None
    try:
        state = m.where / "state"
        for f in (state / "staging").rglob("*") if (state / "staging").exists() else []:
            if f.is_file() and f.name != "pending-update.json" and f.stat().st_size:
                with open(f, "r+b") as fh:  # one byte off in whatever staging holds
                    b = fh.read(1)
                    fh.seek(0)
                    fh.write(bytes([b[0] ^ 0xFF]))
        run = tmp / f"b{i}"
        run.mkdir()
        cfg = json.loads(json.dumps(cfg_base))
        cfg["model"]["state_dir"] = str(state)
        cfg["control"] = {"socket": str(run / "c.sock")}
        d = Daemon(run, cfg, name="boot").start(timeout=60)
        status = d.call("status")
        st = json.loads((state / "state.json").read_text())
        active = st["active"]
        slot_file = state / "slots" / active / "model.tflite"
        assert hashlib.sha256(slot_file.read_bytes()).hexdigest() == st["slots"][active]["sha256"] \
            == status["model"]["sha256"], f"cut {i}: the served model does not verify"
        served = status["model"]["version"]
        assert served >= acked, f"cut {i}: v{acked} was acknowledged committed, the copy serves v{served}"
        anchor = json.loads((state / "anchor.json").read_text())
        assert st["high_water"]["testmodel"] >= high_water and anchor["high_water"]["testmodel"] >= high_water, \
            f"cut {i}: high-water {st['high_water']} / {anchor['high_water']} below v{high_water}"
        return {"served": served, "trial": bool(st.get("trial"))}
    finally:
        if d is not None:
            d.stop()
        m.close()


@pytest.mark.powercut
def test_power_cuts_during_updates_leave_a_verified_model(tmp_path, record_property):
    need_root_and_loop()
    rng = random.Random(int(os.environ.get("POWERCUT_SEED", "0")) or None)
    saved = {k: (VM / k).read_text().strip() for k in HOLD}
    image = make_image(tmp_path / "disk.img", IMAGE_MB)
    primary = None
    mount = None
    srv = None
    try:
        for k, v in HOLD.items():
            (VM / k).write_text(v)
        mount = Mounted(image, tmp_path / "mnt")
        generate_keypair(tmp_path / "k")
        rel_dir = tmp_path / "rel"
        Throttled.root = rel_dir
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Throttled)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        base = "http://127.0.0.1:%d" % srv.server_address[1]
        models = {v: testmodels.write_model(tmp_path / f"v{v}.tflite", kind="dense", input_shape=(1, 4096),
                                            outputs=64, seed=1, version_tag=v) for v in range(1, CUTS + 3)}
        cfg = base_config(tmp_path, models[1], update={
            "trusted_keys": [str(tmp_path / "k" / "edgeagent.pub")], "probation_s": 0.5, "min_inferences": 5})
        cfg["model"]["state_dir"] = str(mount.where / "state")
        primary = Daemon(tmp_path, cfg, name="primary").start()
        events = Events(primary.socket_path)
        phases: collections.Counter = collections.Counter()
        served: collections.Counter = collections.Counter()
        acked_commit, high_water = 1, 1
        for i, v in enumerate(range(2, CUTS + 2)):
            rel = make_release(keys=[str(tmp_path / "k" / "edgeagent.key")], target=models[v], base=None,
                               model="testmodel", version=v, out_dir=rel_dir / f"v{v}", force_full=True)
            args = {"manifest": json.loads(Path(rel["manifest"]).read_text()),
                    "payload_url": f"{base}/v{v}/{Path(rel['payload']).name}"}
            t0 = time.monotonic()
            threading.Thread(target=lambda a=args: _call_quietly(primary.socket_path, a), daemon=True).start()
            time.sleep(rng.uniform(0.0, 1.3))  # somewhere in download, write, health, trial or commit
            primary.proc.send_signal(signal.SIGSTOP)
            cut_at = time.monotonic()
            try:
                copy = tmp_path / "cut.img"
                shutil.copyfile(image, copy)  # the disk as it is when the power goes
            finally:
                primary.proc.send_signal(signal.SIGCONT)
            seen = events.before(cut_at)
            acked = max([acked_commit] + [e["version"] for e in seen if e.get("event") == "update.committed"])
            trial_hw = max([high_water] + [e["version"] for e in seen if e.get("event") == "update.trial"])
            mine = [e["event"] for e in seen if e.get("version") == v and e.get("event", "").startswith("update.")]
            phases[mine[-1] if mine else "update.check"] += 1
            r = _check_copy(i, tmp_path, copy, cfg, acked, trial_hw)
            served["v%s%s" % ("new" if r["served"] == v else "old", " trial" if r["trial"] else "")] += 1
            copy.unlink()
            done = events.wait(("update.committed", "update.rolled_back", "update.rejected"), v)
            if done["event"] == "update.committed":
                acked_commit = v
            high_water = max(high_water, trial_hw, acked_commit)
            assert time.monotonic() - t0 < 120
        record_property("terminal_summary", f"power cuts: {CUTS} of {CUTS} survived (e2fsck, staging corrupted, booted: a "
                                f"verified model served, high-water and acknowledged commits kept); last event "
                                f"before each cut: {dict(sorted(phases.items()))}; the copy served: "
                                f"{dict(sorted(served.items()))}")
    finally:
        if primary is not None and primary.proc is not None and primary.proc.poll() is None:
            primary.stop()
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        if mount is not None:
            mount.close()
        for k, v in saved.items():
            (VM / k).write_text(v)


def _call_quietly(sock: str, args: dict) -> None:
    try:
        with ControlClient(sock, timeout=120) as c:
            c.call("update", args)
    except Exception:  # noqa: BLE001 - the outcome is read from the events
        pass
