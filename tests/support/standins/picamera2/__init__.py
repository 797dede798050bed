"""A stand-in for picamera2 (the only fake in these tests: this machine has no camera).

It copies the part of picamera2's API the camera source uses, with picamera2's own behaviour:
`Picamera2.global_camera_info()` lists the cameras libcamera sees (here: EDGEAGENT_FAKE_CSI
cameras, default 1); `Picamera2(camera_num)` fails for a camera that is not there;
`create_video_configuration(main={"size", "format"})` defaults to 1280x720 XBGR8888;
`configure`, `start`, `stop`, `close`; `capture_array("main")` returns a new (H, W, C) uint8 array
laid out as picamera2 documents it: BGR888 is [R, G, B] per pixel, RGB888 is [B, G, R],
XBGR8888 is [R, G, B, 255], XRGB8888 is [B, G, R, 255]. The scene is a red left half and a
blue right half, so a test can tell the channel order.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["Picamera2"]

_LAYOUT = {"BGR888": (0, 1, 2), "RGB888": (2, 1, 0), "XBGR8888": (0, 1, 2, 3), "XRGB8888": (2, 1, 0, 3)}


class Picamera2:
    opened: list["Picamera2"] = []  # for tests: every camera object made

    @staticmethod
    def global_camera_info() -> list[dict]:
        n = int(os.environ.get("EDGEAGENT_FAKE_CSI", "1"))
        return [{"Model": "imx708", "Location": 2, "Rotation": 0, "Id": f"/base/soc/i2c0mux/i2c@1/imx708@1a/{i}",
                 "Num": i} for i in range(n)]

    def __init__(self, camera_num: int = 0) -> None:
        if camera_num >= len(self.global_camera_info()):
            raise IndexError("list index out of range")  # what picamera2 raises for a missing camera
        self.camera_num = camera_num
        self.config: dict | None = None
        self.started = False
        self.closed = False
        self.frames = 0
        Picamera2.opened.append(self)

    def create_video_configuration(self, main: dict | None = None, **_: object) -> dict:
        m = {"format": "XBGR8888", "size": (1280, 720), **(main or {})}
        return {"use_case": "video", "main": m}

    def configure(self, config: dict) -> None:
        if config["main"]["format"] not in _LAYOUT:
            raise RuntimeError(f"unsupported format {config['main']['format']}")
        self.config = config

    def start(self) -> None:
        if self.config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def capture_array(self, name: str = "main") -> np.ndarray:
        if not self.started:
            raise RuntimeError("Camera not started")
        w, h = self.config[name]["size"]
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[:, : w // 2, 0] = 255  # red left half
        rgba[:, w // 2:, 2] = 255  # blue right half
        rgba[..., 3] = 255
        self.frames += 1
        return np.ascontiguousarray(rgba[..., list(_LAYOUT[self.config[name]["format"]])])

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True
