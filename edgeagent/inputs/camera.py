"""Cameras: OpenCV's VideoCapture (a device index, /dev/videoN, a video file or a URL) and
picamera2 (Raspberry Pi CSI cameras under libcamera, which OpenCV cannot open: opencv#22820).

Frames come out as uint8 HxWx3 RGB from either. A video file starts again at its end when `loop`
is set (the demo and tests use one as a stand-in camera). picamera2 is installed from apt
(python3-picamera2), not PyPI, so the venv must see the system site-packages.
"""

from __future__ import annotations

import numpy as np

from edgeagent.errors import SourceError


OPENCV_MISSING = "the camera source needs OpenCV: pip install 'edgeagent[camera]'"
PICAMERA2_MISSING = ("input.camera.backend = \"picamera2\" needs the picamera2 module: apt install python3-picamera2, "
                     "in a venv made with --system-site-packages (scripts/install.sh makes it so)")


def _cv2():
    try:
        import cv2  # type: ignore
    except ImportError:
        raise SourceError("input.missing_extra", OPENCV_MISSING) from None
    return cv2


def picamera2_module():
    """The picamera2 module, or None where it is not installed (or does not import: no libcamera)."""
    try:
        import picamera2  # type: ignore
    except Exception:  # noqa: BLE001 - ImportError, or libcamera failing to load
        return None
    return picamera2


def choose_backend(backend: str, device: str) -> str:
    """auto: picamera2 when it imports and lists a camera at this index (a CSI camera), else
    OpenCV (USB cameras, /dev/videoN, files, URLs)."""
    if backend != "auto":
        return backend
    if device.isdigit():
        pc = picamera2_module()
        if pc is not None:
            try:
                cams = pc.Picamera2.global_camera_info()
            except Exception:  # noqa: BLE001
                cams = []
            if int(device) < len(cams):
                return "picamera2"
    return "opencv"


class Picamera2Source:
    """A libcamera camera through picamera2: a video configuration in BGR888, which picamera2
    lays out as [R, G, B] per pixel (its RGB888 is [B, G, R]), so frames need no conversion."""

    name = "camera"

    def __init__(self, device: str, width: int = 0, height: int = 0) -> None:
        self.device = device
        self.num = int(device) if device.isdigit() else 0
        self.width, self.height = width, height
        self._cam = None

    def open(self) -> None:
        pc = picamera2_module()
        if pc is None:
            raise SourceError("input.missing_extra", PICAMERA2_MISSING)
        self.close()
        main: dict = {"format": "BGR888"}
        if self.width and self.height:
            main["size"] = (self.width, self.height)
        cam = None
        try:
            cam = pc.Picamera2(self.num)
            cam.configure(cam.create_video_configuration(main=main))
            cam.start()
        except Exception as e:  # noqa: BLE001 - libcamera's errors, as one line
            if cam is not None:
                try:
                    cam.close()
                except Exception:  # noqa: BLE001
                    pass
            raise SourceError("input.open_failed", f"picamera2 camera {self.num}: {e}") from None
        self._cam = cam

    def read(self) -> np.ndarray:
        if self._cam is None:
            raise SourceError("input.read_failed", f"picamera2 camera {self.num}: not open")
        try:
            frame = self._cam.capture_array("main")
        except Exception as e:  # noqa: BLE001
            raise SourceError("input.read_failed", f"picamera2 camera {self.num}: {e}") from None
        if frame.ndim == 3 and frame.shape[2] == 4:  # an XBGR8888 stream: drop the padding byte
            frame = frame[..., :3]
        return frame

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()


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
