"""Camera backends: picamera2 for Raspberry Pi CSI cameras (through a stand-in module that copies
picamera2's API: there is no camera here), OpenCV otherwise, and a backend configured but not
installed as a configuration error (exit 2) rather than a retry loop."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeagent.config import CameraInput, InputConfig
from edgeagent.engine.spec import TensorSpec
from edgeagent.errors import ConfigError
from edgeagent.inputs import camera
from edgeagent.inputs.factory import make_source

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tests/support/standins"
IMG = TensorSpec("input", 0, (1, 32, 32, 3), np.dtype(np.float32))


@pytest.fixture
def picamera2(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDINS))
    sys.modules.pop("picamera2", None)
    import picamera2 as mod

    mod.Picamera2.opened.clear()
    yield mod
    sys.modules.pop("picamera2", None)


def cam_cfg(**kw) -> InputConfig:
    return InputConfig(source="camera", camera=CameraInput(**kw))


def test_auto_picks_picamera2_for_a_csi_camera_and_frames_are_rgb(picamera2):
    src = make_source(cam_cfg(width=64, height=48), IMG)
    assert isinstance(src, camera.Picamera2Source)
    src.open()
    f = src.read()
    assert f.dtype == np.uint8 and f.shape == (48, 64, 3)
    np.testing.assert_array_equal(f[0, 0], [255, 0, 0])  # the stand-in's scene: red on the left
    np.testing.assert_array_equal(f[0, -1], [0, 0, 255])  # and blue on the right, in RGB order
    cam = picamera2.Picamera2.opened[-1]
    assert cam.config["main"]["format"] == "BGR888" and cam.started
    src.close()
    assert cam.closed and not cam.started


def test_auto_falls_back_to_opencv(picamera2, monkeypatch):
    monkeypatch.setenv("EDGEAGENT_FAKE_CSI", "0")  # picamera2 imports but sees no camera (a USB webcam)
    assert isinstance(make_source(cam_cfg(), IMG), camera.CameraSource)
    monkeypatch.setenv("EDGEAGENT_FAKE_CSI", "1")
    assert isinstance(make_source(cam_cfg(device="/dev/video0"), IMG), camera.CameraSource)  # a path: OpenCV
    assert isinstance(make_source(cam_cfg(backend="opencv"), IMG), camera.CameraSource)


def test_picamera2_configured_but_not_installed_is_a_config_error(monkeypatch):
    monkeypatch.setattr(camera, "picamera2_module", lambda: None)
    with pytest.raises(ConfigError) as ei:
        make_source(cam_cfg(backend="picamera2"), IMG)
    assert ei.value.code == "input.missing_extra" and "--system-site-packages" in ei.value.message
    # auto without picamera2: OpenCV, as before
    assert isinstance(make_source(cam_cfg(), IMG), camera.CameraSource)


def test_a_missing_camera_index_fails_to_open_with_one_line(picamera2):
    src = camera.Picamera2Source("3")
    with pytest.raises(Exception) as ei:
        src.open()
    assert getattr(ei.value, "code", "") == "input.open_failed" and "picamera2 camera 3" in str(ei.value)


def _daemon_run(tmp_path: Path, input_cfg: str, pythonpath: str):
    from edgeagent.engine import testmodels

    m = testmodels.write_model(tmp_path / "m.tflite", kind="conv", input_shape=(1, 32, 32, 3))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\ninitial = "{m}"\nstate_dir = "{tmp_path}/state"\n[control]\n'
                   f'socket = "{tmp_path}/ctl.sock"\n{input_cfg}')
    env = dict(os.environ, PYTHONPATH=pythonpath + os.pathsep + str(REPO))
    return cfg, env


def test_the_daemon_serves_a_csi_camera_through_picamera2(tmp_path):
    from tests.support.daemon import Daemon, base_config
    from edgeagent.engine import testmodels

    m = testmodels.write_model(tmp_path / "m.tflite", kind="conv", input_shape=(1, 32, 32, 3))
    d = Daemon(tmp_path, base_config(tmp_path, m, input={"source": "camera", "rate_hz": 20.0,
                                                          "camera": {"width": 64, "height": 48}}))
    d.start(env={"PYTHONPATH": f"{STANDINS}{os.pathsep}{REPO}"})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (d.call("status").get("telemetry") or {}).get("inference"):
            time.sleep(0.2)
        inf = d.call("status")["telemetry"]["inference"]
        assert inf["count"] > 0 and inf["input_errors"] == 0
        assert "camera 0 through picamera2" in d.log()
    finally:
        d.stop()


def test_a_camera_without_opencv_stops_the_start_with_exit_2(tmp_path):
    """Configured but not installed: one line, exit 2 (the unit does not restart it), not ready at 0 fps."""
    hide = tmp_path / "hide"
    (hide / "cv2").mkdir(parents=True)
    (hide / "cv2/__init__.py").write_text("raise ImportError(\"No module named 'cv2'\")\n")
    cfg, env = _daemon_run(tmp_path, '[input]\nsource = "camera"\n[input.camera]\nbackend = "opencv"\n', str(hide))
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(cfg), "run"], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "edgeagent: input.missing_extra: the camera source needs OpenCV: pip install 'edgeagent[camera]'"
