"""A camera through OpenCV's VideoCapture: a device index, /dev/videoN, a video file or a URL.

Frames come out as uint8 HxWx3 RGB. A video file starts again at its end when `loop` is set
(the demo and tests use one as a stand-in camera).
"""

from __future__ import annotations

import numpy as np

from edgeagent.errors import SourceError


def _cv2():
    try:
        import cv2  # type: ignore
    except ImportError:
        raise SourceError("input.missing_extra", "the camera source needs OpenCV: pip install 'edgeagent[camera]'") from None
    return cv2


class CameraSource:
    name = "camera"

    def __init__(self, device: str, width: int = 0, height: int = 0, loop: bool = True) -> None:
        self.device = device
        self.width, self.height, self.loop = width, height, loop
        self._cap = None
        self._rgb: np.ndarray | None = None
        self._cv2 = None

    def open(self) -> None:
        cv2 = self._cv2 = _cv2()
        target: int | str = int(self.device) if self.device.isdigit() else self.device
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise SourceError("input.open_failed", f"camera {self.device}: cannot open")
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self._cap = cap

    def read(self) -> np.ndarray:
        if self._cap is None:
            raise SourceError("input.read_failed", f"camera {self.device}: not open")
        ok, bgr = self._cap.read()
        if not ok and self.loop:
            # end of a video file: rewind (reopen when rewinding is not supported)
            self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
            if not ok:
                self.close()
                self.open()
                ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise SourceError("input.eof" if not self.loop else "input.read_failed", f"camera {self.device}: no frame")
        if self._rgb is None or self._rgb.shape != bgr.shape:
            self._rgb = np.empty_like(bgr)
        self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB, dst=self._rgb)
        return self._rgb

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
