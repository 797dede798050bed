"""A directory of JPEG/PNG images, in name order, cycled; decoded and resized once at open."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgeagent.errors import SourceError

log = logging.getLogger("edgeagent.inputs")

EXTENSIONS = {".jpg", ".jpeg", ".png"}


def _decoder():
    try:
        from PIL import Image  # type: ignore

        def pil(path: Path) -> np.ndarray:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        return pil
    except ImportError:
        pass
    try:
        import cv2  # type: ignore

        def ocv(path: Path) -> np.ndarray:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise OSError("cannot decode")
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return ocv
    except ImportError:
        raise SourceError("input.missing_extra", "the images source needs Pillow: pip install 'edgeagent[images]'") from None


class ImagesSource:
    name = "images"

    def __init__(self, directory: str, size_hw: tuple[int, int] | None = None) -> None:
        self.dir = Path(directory)
        self.size_hw = size_hw
        self._frames: list[np.ndarray] = []
        self._i = 0

    def open(self) -> None:
        decode = _decoder()
        if not self.dir.is_dir():
            raise SourceError("input.open_failed", f"{self.dir}: no such directory")
        frames = []
        for p in sorted(self.dir.iterdir()):
            if p.suffix.lower() not in EXTENSIONS:
                continue
            try:
                img = decode(p)
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                log.warning("images: skipping %s: %s", p.name, e)
                continue
            if self.size_hw and img.shape[:2] != self.size_hw:
                img = _resize(img, self.size_hw)
            frames.append(np.ascontiguousarray(img, dtype=np.uint8))
        if not frames:
            raise SourceError("input.no_images", f"{self.dir}: no readable .jpg/.png images")
        self._frames, self._i = frames, 0

    def __len__(self) -> int:
        return len(self._frames)

    def read(self) -> np.ndarray:
        if not self._frames:
            raise SourceError("input.read_failed", f"{self.dir}: not open")
        f = self._frames[self._i]
        self._i = (self._i + 1) % len(self._frames)
        return f

    def close(self) -> None:
        self._frames = []


def _resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    try:
        import cv2  # type: ignore

        return cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    except ImportError:
        rows = np.arange(hw[0]) * img.shape[0] // hw[0]
        cols = np.arange(hw[1]) * img.shape[1] // hw[1]
        return img[rows[:, None], cols]
