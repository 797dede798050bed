"""Build the configured source for a model's input.

A source configured but not installed (OpenCV, Pillow, picamera2) is a configuration error
(ConfigError, exit 2, which systemd does not restart): retrying with backoff could never fix it.
"""

from __future__ import annotations

import importlib
import logging

from edgeagent.config import InputConfig
from edgeagent.engine.spec import TensorSpec
from edgeagent.errors import ConfigError, SourceError

log = logging.getLogger("edgeagent.inputs")


def _imports(name: str) -> bool:
    """Whether an optional library imports (not merely exists: a broken install counts as missing)."""
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - ImportError, or a shared library that fails to load
        return False
    return True


def make_source(cfg: InputConfig, spec: TensorSpec):
    if cfg.source == "synthetic":
        from edgeagent.inputs.synthetic import SyntheticSource

        return SyntheticSource(spec, cfg.synthetic.pattern, cfg.synthetic.seed)
    if cfg.source == "images":
        from edgeagent.inputs.images import ImagesSource

        if not (_imports("PIL") or _imports("cv2")):
            raise ConfigError("input.missing_extra", "the images source needs Pillow or OpenCV: "
                                                     "pip install 'edgeagent[images]'")
        hw = (spec.shape[1], spec.shape[2]) if len(spec.shape) == 4 else None
        return ImagesSource(cfg.images.dir, hw)
    if cfg.source == "camera":
        from edgeagent.inputs import camera

        c = cfg.camera
        backend = camera.choose_backend(c.backend, c.device)
        log.info("camera %s through %s", c.device, backend)
        if backend == "picamera2":
            if camera.picamera2_module() is None:
                raise ConfigError("input.missing_extra", camera.PICAMERA2_MISSING)
            return camera.Picamera2Source(c.device, c.width, c.height)
        if not _imports("cv2"):
            raise ConfigError("input.missing_extra", camera.OPENCV_MISSING)
        return camera.CameraSource(c.device, c.width, c.height, c.loop)
    from edgeagent.inputs.sensor import IioSource, StreamSource, check_columns, window_for

    s = cfg.sensor
    if s.mode == "iio":
        try:
            check_columns(s.iio_device, len(s.channels), spec)
        except SourceError as e:  # the configured channels do not fit the model: exit 2
            raise ConfigError(e.code, f"input.sensor.channels: {e.message}") from None
        return IioSource(s.iio_device, list(s.channels), window_for(spec, len(s.channels), s.window))
    return StreamSource(s.stream, spec, s.window, s.delimiter)  # columns: the data's own
