"""Each input source with real files: a video file as the camera, PNG/JPEG images, a fake IIO
sysfs tree laid out like the kernel's, a FIFO and a CSV file; and the resilient wrapper."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from edgeagent.config import InputConfig, SensorInput
from edgeagent.engine.spec import TensorSpec
from edgeagent.errors import SourceError
from edgeagent.inputs.camera import CameraSource
from edgeagent.inputs.factory import make_source
from edgeagent.inputs.images import ImagesSource
from edgeagent.inputs.resilient import ResilientSource
from edgeagent.inputs.sensor import IioSource, StreamSource, window_for
from edgeagent.inputs.synthetic import SyntheticSource

IMG = TensorSpec("input", 0, (1, 32, 32, 3), np.dtype(np.float32))
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # RGB


def write_video(path: Path, colors=COLORS, n_each: int = 5) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for rgb in colors:
        for _ in range(n_each):
            w.write(np.full((48, 64, 3), rgb[::-1], np.uint8))  # OpenCV writes BGR
    w.release()
    return path


def test_camera_from_a_video_file_rgb_and_looping(tmp_path):
    cam = CameraSource(str(write_video(tmp_path / "cam.avi")), loop=True)
    cam.open()
    frames = [cam.read().copy() for _ in range(25)]
    cam.close()
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    means = [tuple(int(round(c / 50.0)) * 50 for c in f.reshape(-1, 3).mean(0)) for f in frames]
    assert means[0] == (250, 0, 0) and means[5] == (0, 250, 0) and means[10] == (0, 0, 250)
    assert means[20] == means[0]  # the file started again at its end


def test_camera_eof_without_loop_and_missing_device(tmp_path):
    cam = CameraSource(str(write_video(tmp_path / "c.avi", colors=COLORS[:1], n_each=3)), loop=False)
    cam.open()
    for _ in range(3):
        cam.read()
    with pytest.raises(SourceError) as ei:
        cam.read()
    assert ei.value.code == "input.eof"
    with pytest.raises(SourceError) as ei:
        CameraSource(str(tmp_path / "nope.avi")).open()
    assert ei.value.code == "input.open_failed"


def test_images_png_and_jpeg_cycled_and_resized(tmp_path):
    Image.new("RGB", (100, 80), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (50, 50), (0, 0, 255)).save(tmp_path / "b.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    src = ImagesSource(str(tmp_path), (32, 32))
    src.open()
    a, b, a2 = src.read().copy(), src.read().copy(), src.read().copy()
    assert a.shape == (32, 32, 3) and tuple(a[16, 16]) == (255, 0, 0)
    assert b[16, 16, 2] > 240 and b[16, 16, 0] < 15
    assert np.array_equal(a, a2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError) as ei:
        ImagesSource(str(empty)).open()
    assert ei.value.code == "input.no_images"


def iio_tree(root: Path) -> Path:
    """The layout of /sys/bus/iio/devices/iio:device0 for an accelerometer."""
    dev = root / "sys/bus/iio/devices/iio:device0"
    dev.mkdir(parents=True)
    (dev / "name").write_text("lis3dh\n")
    for ch, raw in (("x", "100"), ("y", "-50"), ("z", "1000")):
        (dev / f"in_accel_{ch}_raw").write_text(raw + "\n")
    (dev / "in_accel_scale").write_text("0.009576\n")  # per type
    (dev / "in_accel_x_offset").write_text("10\n")  # per channel
    return dev


def test_iio_values_are_raw_plus_offset_times_scale(tmp_path):
    dev = iio_tree(tmp_path)
    src = IioSource(str(dev), ["in_accel_x", "in_accel_y", "in_accel_z"], window=4)
    src.open()
    w = src.read()
    np.testing.assert_allclose(w[-1], [(100 + 10) * 0.009576, -50 * 0.009576, 1000 * 0.009576], rtol=1e-5)
    (dev / "in_accel_z_raw").write_text("-1000\n")  # the kernel updates the value in place
    w = src.read()
    assert w[-1, 2] == pytest.approx(-1000 * 0.009576) and w[-2, 2] == pytest.approx(1000 * 0.009576)
    (dev / "in_accel_y_raw").write_text("garbage\n")
    with pytest.raises(SourceError) as ei:
        src.read()
    assert ei.value.code == "input.bad_data"
    src.close()


def test_stream_from_a_fifo_with_garbage_lines(tmp_path):
    fifo = tmp_path / "sensor.fifo"
    os.mkfifo(fifo)
    lines = ["1,2,3", "garbage", "4,5", "7,8,9", "nan,1,2", "10,11,12"]

    def writer():
        with open(fifo, "w") as fh:
            for l in lines:
                fh.write(l + "\n")
                fh.flush()
                time.sleep(0.01)

    src = StreamSource(str(fifo), TensorSpec("s", 0, (1, 2, 3), np.dtype(np.float32)), window=2, timeout_s=2)
    src.open()
    t = threading.Thread(target=writer)
    t.start()
    w1 = src.read().copy()
    w2 = src.read().copy()
    w3 = src.read().copy()
    t.join()
    np.testing.assert_array_equal(w1[-1], [1, 2, 3])
    np.testing.assert_array_equal(w2, [[1, 2, 3], [7, 8, 9]])
    np.testing.assert_array_equal(w3[-1], [10, 11, 12])
    assert src.bad_lines == 3
    with pytest.raises(SourceError) as ei:  # no writer, no data: a timeout, not a hang
        s2 = StreamSource(str(fifo), TensorSpec("s", 0, (1, 2, 3), np.dtype(np.float32)), 2, timeout_s=0.3)
        s2.open()
        s2.read()
    assert ei.value.code == "input.timeout"
    src.close()


def test_stream_from_a_csv_file(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("0.5;1.5\n2.5;3.5\n")
    src = make_source(InputConfig(source="sensor", sensor=SensorInput(mode="stream", stream=str(csv), delimiter=";",
                                                                      channels=["a", "b"], window=2)),
                      TensorSpec("s", 0, (1, 2, 2), np.dtype(np.float32)))
    src.open()
    src.read()
    np.testing.assert_array_equal(src.read(), [[0.5, 1.5], [2.5, 3.5]])


def _fifo_pair(tmp_path: Path, spec: TensorSpec, window: int = 0):
    fifo = tmp_path / "sensor.fifo"
    os.mkfifo(fifo)
    src = StreamSource(str(fifo), spec, window=window, timeout_s=2)
    src.open()  # the reader first (non-blocking), then the producer can open without waiting
    w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    return src, w


SENSOR = TensorSpec("s", 0, (1, 10, 3), np.dtype(np.float32))


def test_a_flooded_stream_feeds_the_newest_window_and_counts_what_it_skipped(tmp_path):
    """60 lines written at once were used one per inference over 12 s at 5 Hz: a lag without end."""
    src, w = _fifo_pair(tmp_path, SENSOR)
    try:
        os.write(w, "".join(f"{i},{i},{i}\n" for i in range(100)).encode())
        win = src.read()
        np.testing.assert_array_equal(win[:, 0], np.arange(90, 100))  # the newest 10, oldest first
        assert src.dropped == 90
        os.write(w, "".join(f"{i},{i},{i}\n" for i in range(100, 105)).encode())
        np.testing.assert_array_equal(src.read()[:, 0], np.arange(95, 105))  # slides by what came
        assert src.dropped == 90
        os.write(w, b"105,105,1")  # half a line: waits for the rest
        threading.Timer(0.2, lambda: os.write(w, b"05\n")).start()
        assert src.read()[-1, 2] == 105
    finally:
        os.close(w)
        src.close()


def test_a_sensor_fifo_at_ten_times_the_rate_keeps_the_loop_current(tmp_path):
    """The real inference loop at 5 Hz, a producer at 50 Hz: the frames the model sees hold the
    newest samples, and the skipped ones show in the loop's telemetry."""
    from edgeagent.engine import testmodels
    from edgeagent.engine.model import Model
    from edgeagent.runtime.loop import InferenceLoop

    model = Model.load(str(testmodels.write_model(tmp_path / "m.tflite", input_shape=(1, 10, 3))))
    src, w = _fifo_pair(tmp_path, model.inputs[0])
    stop = threading.Event()
    written = [0]

    def producer():
        while not stop.is_set():
            n = written[0]
            os.write(w, f"{n},{n},{n}\n".encode())
            written[0] = n + 1
            time.sleep(0.02)

    t = threading.Thread(target=producer)
    t.start()
    loop = InferenceLoop(model, ResilientSource(src), rate_hz=5.0, keep_every_s=0.0)
    loop.start()
    try:
        time.sleep(3.0)
        newest_seen = float(loop.recent_frames()[-1][-1, 0])
        lag = written[0] - 1 - newest_seen
        snap = loop.snapshot()
    finally:
        loop.stop()
        stop.set()
        t.join()
        os.close(w)
        src.close()
    assert written[0] >= 100
    assert lag <= 15, (lag, written[0])  # one-line-per-inference would lag by ~130 after 3 s
    assert snap["input_dropped"] >= written[0] - 15 * 10 - 15 and snap["input_errors"] == 0


def test_columns_come_from_the_data_and_must_fit_the_model(tmp_path):
    six = TensorSpec("s", 0, (1, 4, 6), np.dtype(np.float32))
    src, w = _fifo_pair(tmp_path, six)  # no channels configured: 6 columns fill 6 channels
    try:
        os.write(w, b"1,2,3,4,5,6\n")
        np.testing.assert_array_equal(src.read()[-1], [1, 2, 3, 4, 5, 6])
    finally:
        os.close(w)
        src.close()
    (tmp_path / "sensor.fifo").unlink()
    src, w = _fifo_pair(tmp_path, six)
    try:
        os.write(w, b"1,2,3,4\n")
        with pytest.raises(SourceError) as ei:
            src.read()
        assert ei.value.code == "input.shape_mismatch"
        assert "4 columns per sample" in ei.value.message and "takes 6 channels" in ei.value.message
    finally:
        os.close(w)
        src.close()
    # IIO channels that do not fit the model are a configuration error (exit 2)
    from edgeagent.errors import ConfigError

    with pytest.raises(ConfigError) as ei:
        make_source(InputConfig(source="sensor", sensor=SensorInput(mode="iio", iio_device=str(tmp_path))), six)
    assert ei.value.code == "input.shape_mismatch" and ei.value.exit_code == 2


def test_window_follows_the_model_time_axis():
    assert window_for(TensorSpec("i", 0, (1, 50, 3), np.dtype(np.float32)), 3, 0) == 50
    assert window_for(TensorSpec("i", 0, (1, 30), np.dtype(np.float32)), 3, 0) == 10
    assert window_for(TensorSpec("i", 0, (1, 30), np.dtype(np.float32)), 3, 7) == 7


def test_synthetic_matches_the_spec_and_is_deterministic():
    spec = TensorSpec("i", 0, (1, 8, 8, 3), np.dtype(np.uint8))
    a, b = SyntheticSource(spec, "noise", 3), SyntheticSource(spec, "noise", 3)
    fa, fb = a.read(), b.read()
    assert fa.shape == spec.shape and fa.dtype == np.uint8 and np.array_equal(fa, fb)
    assert not np.array_equal(a.read(), fa)


def test_resilient_source_reports_once_and_recovers(tmp_path):
    video = write_video(tmp_path / "cam.avi")
    states = []
    src = ResilientSource(CameraSource(str(video), loop=False), on_state=lambda n, f: states.append((n, f)),
                          backoff_min=0.05, backoff_max=0.1)
    src.open()
    for _ in range(20):
        src.read()
    hidden = tmp_path / "hidden.avi"
    video.rename(hidden)  # unplugged: the file is gone and the stream has ended
    errors = 0
    for _ in range(20):
        try:
            src.read()
        except SourceError:
            errors += 1
        time.sleep(0.01)
    assert errors == 20 and [n for n, _ in states] == ["input.failed"]
    hidden.rename(video)  # plugged back in
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            src.read()
            break
        except SourceError:
            time.sleep(0.02)
    assert [n for n, _ in states] == ["input.failed", "input.recovered"]
    assert states[0][1]["code"] in ("input.eof", "input.open_failed")
    src.close()
