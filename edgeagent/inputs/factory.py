"""Build the configured source for a model's input."""

from __future__ import annotations

from edgeagent.config import InputConfig
from edgeagent.engine.spec import TensorSpec


def make_source(cfg: InputConfig, spec: TensorSpec):
    if cfg.source == "synthetic":
        from edgeagent.inputs.synthetic import SyntheticSource

        return SyntheticSource(spec, cfg.synthetic.pattern, cfg.synthetic.seed)
    if cfg.source == "images":
        from edgeagent.inputs.images import ImagesSource

        hw = (spec.shape[1], spec.shape[2]) if len(spec.shape) == 4 else None
        return ImagesSource(cfg.images.dir, hw)
    if cfg.source == "camera":
        from edgeagent.inputs.camera import CameraSource

        c = cfg.camera
        return CameraSource(c.device, c.width, c.height, c.loop)
    from edgeagent.inputs.sensor import IioSource, StreamSource, window_for

    s = cfg.sensor
    window = window_for(spec, len(s.channels), s.window)
    if s.mode == "iio":
        return IioSource(s.iio_device, list(s.channels), window)
    return StreamSource(s.stream, len(s.channels), window, s.delimiter)
