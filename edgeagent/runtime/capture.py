"""Keeping input samples for retraining, off the inference thread (opt-in: `[monitor] capture`).

`offer` runs on the inference thread: a clock check against the rate limit, then a copy of the
frame into a queue of 4 (full: dropped and counted). A thread of its own encodes each sample
(PNG for a uint8 pixel frame when Pillow is there, CSV for a sensor window, .npy otherwise) and
writes it to the ring on disk (state/samples.py).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from edgeagent.state.samples import SampleError, SampleStore

log = logging.getLogger("edgeagent.quality")


def encode(frame: np.ndarray) -> tuple[bytes, str]:
    if frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] in (1, 3, 4):
        try:
            from PIL import Image  # type: ignore

            buf = io.BytesIO()
            Image.fromarray(frame[:, :, 0] if frame.shape[2] == 1 else frame).save(buf, format="PNG")
            return buf.getvalue(), "png"
        except ImportError:
            pass
    if frame.ndim == 2:
        return "".join(",".join(f"{v:.6g}" for v in row) + "\n" for row in frame.tolist()).encode(), "csv"
    buf = io.BytesIO()
    np.save(buf, frame, allow_pickle=False)
    return buf.getvalue(), "npy"


class SampleCapture:
    def __init__(self, store: SampleStore, *, min_interval_s: float, version: Callable[[], Any]) -> None:
        self.store = store
        self.min_interval_s = float(min_interval_s)
        self._version = version
        self._q: queue.Queue = queue.Queue(maxsize=4)
        self._last = -float("inf")
        self._warned = -float("inf")
        self.dropped = 0
        self.kept = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, model: Any, frame: np.ndarray, outs: list, conf: float, reason: str) -> None:
        """The inference thread's side: the rate limit first (a clock read), then one copy."""
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return
        self._last = now
        o = outs[0].reshape(-1)
        top = int(o.argmax())
        names = getattr(model, "labels", None)
        try:
            self._q.put_nowait((time.time(), self._version(), np.array(frame, copy=True), top,
                                names[top] if names is not None and top < len(names) else None, conf, reason))
        except queue.Full:
            self.dropped += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ts, version, frame, top, label, conf, reason = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                data, ext = encode(frame)
                meta = {"ts": round(ts, 3), "model": version, "reason": reason, "argmax": top,
                        "confidence": round(float(conf), 6), "shape": list(frame.shape), "dtype": frame.dtype.name}
                if label is not None:
                    meta["label"] = label
                self.store.add(data, ext, meta)
                self.kept += 1
            except (OSError, SampleError) as e:  # a full disk must not end the daemon: the sample is lost
                self.dropped += 1
                if time.monotonic() - self._warned > 60:
                    self._warned = time.monotonic()
                    log.warning("sample not kept: %s", getattr(e, "strerror", None) or e)
            except Exception:  # noqa: BLE001
                log.exception("sample not kept")
