"""Representative data as frames, for building a model's quality reference at release time.

A directory of images (decoded and resized like the `images` source), an `.npz` whose `inputs`
holds N examples shaped like input 0 without its batch axis (a golden set serves), or a CSV
recording (windowed like the `sensor` source, a line per frame). The same adaptation as on the
device, so the reference describes what the device will see of the same data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from edgeagent.engine.spec import TensorSpec
from edgeagent.errors import SourceError


def frames(data: str | Path, spec: TensorSpec, *, limit: int = 100_000) -> Iterator[np.ndarray]:
    p = Path(data)
    if p.is_dir():
        from edgeagent.inputs.images import ImagesSource

        hw = (int(spec.shape[1]), int(spec.shape[2])) if len(spec.shape) == 4 else None
        src = ImagesSource(str(p), hw)
        src.open()
        try:
            yield from (src.read() for _ in range(min(limit, len(src))))
        finally:
            src.close()
    elif p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                inputs = np.asarray(z["inputs"])
        except (OSError, KeyError, ValueError) as e:
            raise SourceError("input.bad_data", f"{p}: an .npz with an 'inputs' array is needed ({e})") from None
        yield from inputs[:limit]
    elif p.is_file():
        from edgeagent.inputs.sensor import StreamSource

        lines = sum(1 for line in p.open("rb") if line.strip())
        src = StreamSource(str(p), spec)
        src.open()
        try:
            yield from (src.read() for _ in range(min(limit, lines)))
        finally:
            src.close()
    else:
        raise SourceError("input.bad_data", f"{p}: no such directory or file")
