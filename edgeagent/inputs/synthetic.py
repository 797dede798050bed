"""Deterministic frames shaped exactly like the model's input: the default source.

A small cycle of frames is generated once, so read() costs nothing and a benchmark measures
the pipeline, not the generator.
"""

from __future__ import annotations

import numpy as np

from edgeagent.engine.spec import TensorSpec

CYCLE = 8


def make_frames(spec: TensorSpec, pattern: str = "gradient", seed: int = 0, n: int = CYCLE) -> list[np.ndarray]:
    shape, dtype = spec.shape, np.dtype(spec.dtype)
    if pattern == "noise":  # numpy.random is imported only for this pattern
        rng = np.random.default_rng(seed)
        reals = [rng.random(shape, dtype=np.float64) for _ in range(n)]
    else:  # a gradient that moves from frame to frame
        ramp = np.linspace(0.0, 1.0, int(np.prod(shape)), dtype=np.float64).reshape(shape)
        # x - floor(x), not x % 1.0: the same values (exact for 0 <= x < 2), at a third of the cost
        reals = [x - np.floor(x) for x in (ramp + i / n for i in range(n))]
    frames = []
    for real in reals:
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            frames.append((info.min + real * (info.max - info.min)).astype(dtype))
        else:
            frames.append(real.astype(dtype))
    return frames


class SyntheticSource:
    name = "synthetic"

    def __init__(self, spec: TensorSpec, pattern: str = "gradient", seed: int = 0) -> None:
        self._frames = make_frames(spec, pattern, seed)
        self._i = 0

    def open(self) -> None:
        self._i = 0

    def read(self) -> np.ndarray:
        f = self._frames[self._i]
        self._i = (self._i + 1) % len(self._frames)
        return f

    def close(self) -> None:
        pass
