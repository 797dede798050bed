"""Samples for retraining (issue 22): opt-in, kept in a bounded ring on disk under state_dir, and
served locally and over MQTT (large ones as announced chunks, like an update's transfer)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgeagent.engine import testmodels
from tests.mqtt.test_mqtt_daemon import P, REPO, mqtt_cfg
from tests.support.daemon import Daemon, base_config


def test_low_confidence_samples_are_kept_bounded_and_served_over_mqtt(tmp_path, broker, peers):
    from PIL import Image

    pics = tmp_path / "pics"
    pics.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(pics / f"{i:02d}.png")
    model = testmodels.write_model(tmp_path / "m.tflite", kind="conv", input_shape=(1, 32, 32, 3), outputs=8, seed=2)
    cap = 64 * 1024
    cfg = base_config(tmp_path, model, **mqtt_cfg(broker.port, max_message_bytes=2048),
                      input={"source": "images", "rate_hz": 100.0, "images": {"dir": str(pics)}},
                      monitor={"capture": "low_confidence", "capture_max_bytes": cap, "capture_min_interval_s": 0.0})
    peer = peers(broker.port)
    d = Daemon(tmp_path, cfg).start()
    try:
        samples = tmp_path / "state/samples"
        deadline = time.monotonic() + 20
        written = lambda: max((int(p.stem.split("-")[1]) for p in samples.glob("*.png")), default=0)  # noqa: E731
        while time.monotonic() < deadline and written() < 40:  # twice what the ring holds
            time.sleep(0.2)
        assert written() >= 40
        # from here on one frame every 10 s: the ring no longer turns over while a sample is fetched
        d.call("config.set", {"key": "input.rate_hz", "value": 0.1})
        time.sleep(0.3)
        files = [p for p in samples.iterdir() if p.is_file() and not p.name.startswith(".")]  # not one being written
        assert sum(p.stat().st_size for p in files) <= cap
        listed = d.call("samples.list")
        assert listed["bytes"] <= cap and listed["max_bytes"] == cap and len(listed["samples"]) >= 5
        s = listed["samples"][-1]
        assert s["reason"] == "low_confidence" and s["confidence"] < 0.5 and s["kind"] == "png" and s["model"] == 1

        # over MQTT: larger than max_message_bytes / 2, so announced and sent as chunks
        mark = len(peer.msgs)
        r = peer.request("samples.get", {"id": s["id"]})
        assert r["ok"], r
        tr = r["result"]["transfer"]
        chunks = {}
        for i in range(tr["chunks"]):
            chunks[i] = peer.wait(lambda t, b, i=i: t == f"{P}/samples/{s['id']}/{i}", 10, mark)
        data = b"".join(bytes(chunks[i]) for i in range(tr["chunks"]))
        assert tr["chunks"] >= 2
        assert [hashlib.sha256(bytes(chunks[i])).hexdigest() for i in range(tr["chunks"])] == tr["chunk_sha256"]
        img = Image.open(__import__("io").BytesIO(data))
        assert img.size == (32, 32)
        local = d.call("samples.get", {"id": s["id"]})
        assert base64.b64decode(local["data_b64"]) == data

        # and the local CLI
        out = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(d.config_path), "samples", "get", s["id"],
                              "--out", str(tmp_path / "x.png")], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.returncode == 0 and (tmp_path / "x.png").read_bytes() == data, out.stderr
        bad = peer.request("samples.get", {"id": "../../state"})
        assert not bad["ok"] and bad["error"]["code"] == "samples.not_found"
        assert d.call("samples.clear")["cleared"] >= 5
    finally:
        d.stop()


def test_samples_are_off_unless_enabled(tmp_path, start_daemon):
    d = start_daemon()
    time.sleep(1.0)
    from edgeagent.errors import CommandError

    try:
        d.call("samples.list")
        raise AssertionError("samples.list answered with capture off")
    except CommandError as e:
        assert e.code == "samples.off"
    assert not (tmp_path / "state/samples").exists()
