"""Prediction quality in production (issue 22): a real model on a real input stream, each window
of frames judged against the model's reference, with alarms that neither flap nor stay silent."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edgeagent.engine import testmodels
from edgeagent.engine.model import Model
from edgeagent.inputs.sensor import StreamSource
from edgeagent.runtime.quality import QualityMonitor
from tests.e2e.test_update import wait_until

pytestmark = pytest.mark.long(seconds=25)


def recording(path: Path, segments: list[tuple[int, float]], seed: int = 3) -> Path:
    """A CSV recording of 4 sensor channels: (lines, offset) segments of unit noise."""
    rng = np.random.default_rng(seed)
    rows = [rng.normal(off, 1.0, size=(n, 4)) for n, off in segments]
    path.write_text("".join(",".join(f"{v:.4f}" for v in r) + "\n" for r in np.concatenate(rows)))
    return path


def events_of(d) -> list[dict]:
    return d.call("status")["events"]


def test_a_sensor_offset_that_moves_raises_model_drift_and_clears_when_it_returns(tmp_path, start_daemon,
                                                                                     model_path):
    # 5 s to learn the reference at 400 Hz, 3 normal windows, 5 shifted, 7 normal again
    rec = recording(tmp_path / "imu.csv", [(2000, 0.0), (1200, 0.0), (2000, 3.0), (2800, 0.0)])
    d = start_daemon(input={"source": "sensor", "rate_hz": 400.0,
                            "sensor": {"mode": "stream", "stream": str(rec)}},
                     monitor={"window": 400, "learn_frames": 2000, "alarm_windows": 2},
                     metrics={"textfile": str(tmp_path / "edgeagent.prom")})
    seen: list[dict] = []

    def named(name: str) -> dict | None:
        for e in d.call("status")["events"]:
            if e not in seen:
                seen.append(e)
        return next((e for e in seen if e["event"] == name), None)

    learned = wait_until(lambda: named("model.reference_learned"), timeout=30)
    assert learned["frames"] == 2000
    assert (tmp_path / "state/slots/a/reference.json").is_file()
    drift = wait_until(lambda: named("model.drift"), timeout=30)
    assert drift["metric"] in ("input", "class", "confidence") and drift["psi"] > 0.25 and drift["version"] == 1
    t_drift = time.monotonic()
    prom = wait_until(lambda: (lambda t: t if f'edgeagent_quality_drift{{metric="{drift["metric"]}"}} 1.0' in t else None)(
        (tmp_path / "edgeagent.prom").read_text()), timeout=10)
    assert 'edgeagent_quality_psi{metric="input",reference="learned"}' in prom
    cleared = wait_until(lambda: named("model.drift_cleared"), timeout=30)
    assert cleared["psi"] < 0.1
    assert time.monotonic() - t_drift < 15
    q = d.call("status")["telemetry"]["quality"]
    assert q["reference"] == "learned" and q["window"] >= 10 and q["psi_input"] is not None
    # the normal stretch before the shift raised nothing: the only drift events are the shift's
    drifts = [e for e in seen if e["event"] == "model.drift"]
    assert all(e["ts"] >= learned["ts"] + 2.5 for e in drifts), drifts


def test_an_unshifted_stream_raises_no_alarm_over_twenty_windows(tmp_path):
    """No false alarm at the default thresholds: a real model on a real recording, 20 windows."""
    model_file = testmodels.write_model(tmp_path / "m.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1)
    model = Model.load(str(model_file), num_threads=1)
    rec = recording(tmp_path / "imu.csv", [(30000, 0.0)], seed=11)
    src = StreamSource(str(rec), model.inputs[0])
    src.open()
    events: list[tuple] = []
    judged: list[dict] = []
    mon = QualityMonitor(window=300, learn_frames=1000, alarm_windows=3, emit=lambda n, **f: events.append((n, f)))
    for _ in range(1200 + 20 * 300):  # learning takes whole windows: 4 of 300 frames
        frame = src.read()
        model.preprocess(frame)
        model.invoke()
        mon.on_frame(model, frame, model.outputs_view())
        before = mon.windows
        mon.poll()
        if mon.windows > before:
            judged.append(mon.figures())
    src.close()
    assert [n for n, _ in events] == ["model.reference_learned", "model.quality"]  # no drift, nor a clear
    assert mon.windows == 20 and mon.drifting == set()
    assert all(q["reference"] == "learned" for q in judged)
    worst = max(max(q["psi_class"], q["psi_confidence"], q["psi_input"]) for q in judged)
    assert worst < 0.25, judged  # each window under the alarm line (0.25), not only K in a row


def images(folder: Path, lo: int, hi: int, n: int = 40, seed: int = 5) -> Path:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(lo, hi, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_a_signed_reference_travels_with_the_model_and_judges_what_the_camera_sees(tmp_path, start_daemon, model_path):
    """`release --reference` runs the target on representative images and signs the histograms;
    a changed count is refused like any signed field; on a device whose camera sees much darker
    frames than the reference, the new model raises model.drift against the signed reference."""
    import json
    import subprocess
    import sys

    from edgeagent.update.keys import generate_keypair
    from tests.e2e.test_update import REPO, cli, slots, trusted

    generate_keypair(tmp_path / "k1")
    v1 = testmodels.write_model(tmp_path / "v1.tflite", kind="conv", input_shape=(1, 32, 32, 3), outputs=8, seed=2)
    v2 = testmodels.write_model(tmp_path / "v2.tflite", kind="conv", input_shape=(1, 32, 32, 3), outputs=8, seed=2,
                                version_tag=2)
    bright, dark = images(tmp_path / "bright", 150, 256), images(tmp_path / "dark", 0, 40, seed=6)
    r = subprocess.run([sys.executable, "-m", "edgeagent", "release", "--key", str(tmp_path / "k1/edgeagent.key"),
                        "--base", str(v1), "--target", str(v2), "--model", "testmodel", "--version", "2",
                        "--out", str(tmp_path / "rel"), "--reference", str(bright), "--reference-window", "50"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    manifest = tmp_path / "rel/testmodel-2.manifest.json"
    env = json.loads(manifest.read_text())
    mon = env["signed"]["monitor"]
    assert mon["frames"] == 40 and mon["window"] == 50 and sum(mon["class"]) == 40 and len(mon["class"]) == 8
    assert sum(mon["input"][0]["counts"]) == 40 and mon["alarm_psi_e6"] == 250000

    d = start_daemon(model_file=v1, input={"source": "images", "rate_hz": 100.0, "images": {"dir": str(dark)}},
                     update={**trusted(tmp_path, "k1"), "probation_s": 1.0})
    tampered = json.loads(manifest.read_text())
    tampered["signed"]["monitor"]["class"][0] += 5
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    r = cli(d.config_path, "install", str(tmp_path / "tampered.json"), "--payload", str(tmp_path / "rel/testmodel-2.bsdiff4"))
    assert r.returncode == 1 and "update.bad_signature" in r.stderr, r.stderr

    r = cli(d.config_path, "install", str(manifest), "--payload", str(tmp_path / "rel/testmodel-2.bsdiff4"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "state/slots/b/reference.json").read_text())["source"] == "signed"
    drift = wait_until(lambda: next((e for e in d.call("status")["events"] if e["event"] == "model.drift"), None),
                       timeout=20)
    assert drift["reference"] == "signed" and drift["version"] == 2
    assert d.call("status")["telemetry"]["quality"]["reference"] == "signed"
    assert slots(d)["b"]["version"] == 2


def test_top_shows_the_quality_line():
    from edgeagent.cli.top import TopView

    view = TopView("dev")
    view.on_telemetry({"seq": 1, "quality": {"reference": "signed", "psi_class": 0.412, "psi_confidence": 0.05,
                                             "psi_input": 0.02, "low_confidence_pct": 12.5, "drift": ["class"]}})
    line = next(ln for ln in view.lines() if ln.startswith("quality"))
    assert line == ("quality (signed) PSI class 0.412  confidence 0.050  input 0.020  low confidence 12.5%  "
                    "DRIFT: class")


def test_a_reference_from_a_csv_recording_or_an_npz_matches_what_the_device_sees(tmp_path):
    """`release --reference` takes the same data a device sees: a CSV recording is windowed like
    the sensor source, an .npz's `inputs` (a golden set's) fed as they are."""
    from edgeagent.inputs.dataset import frames
    from edgeagent.runtime.quality import reference_from

    model_file = testmodels.write_model(tmp_path / "m.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1)
    model = Model.load(str(model_file), num_threads=1)
    rec = recording(tmp_path / "imu.csv", [(500, 0.0)], seed=2)
    ref = reference_from(model, frames(rec, model.inputs[0]), window=100)
    assert ref.frames == 500 and len(ref.inputs) == 4 and sum(ref.classes) == 500 and ref.window == 100
    np.savez(tmp_path / "golden.npz", inputs=np.random.default_rng(1).normal(size=(64, 1, 16)).astype(np.float32))
    ref2 = reference_from(model, frames(tmp_path / "golden.npz", model.inputs[0]))
    assert ref2.frames == 64 and sum(ref2.confidence.counts) == 64
    # and replayed through the monitor, the recording it was built from is no drift
    mon = QualityMonitor(window=100)
    model.reference = ref
    for f in frames(rec, model.inputs[0]):
        model.preprocess(f)
        model.invoke()
        mon.on_frame(model, f, model.outputs_view())
    mon.poll()
    q = mon.figures()
    assert q["reference"] == "signed" and max(q["psi_class"], q["psi_input"]) < 0.25, q
    model.close()
