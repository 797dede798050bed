"""Numeric sensor channels, windowed into the model's input.

Two ways in: Linux IIO sysfs (value = (raw + offset) * scale, per channel or per channel type,
files kept open and re-read with seek(0) as sysfs allows), or a line stream (a CSV file, a FIFO
or a serial device, one sample per line). read() returns a float32 (window, channels) array that
is reused: it is valid until the next read().
"""

from __future__ import annotations

import logging
import os
import re
import select
import time
from pathlib import Path

import numpy as np

from edgeagent.engine.spec import TensorSpec
from edgeagent.errors import SourceError

log = logging.getLogger("edgeagent.inputs")

MAX_BAD_LINES = 20


def window_for(spec: TensorSpec, channels: int, configured: int) -> int:
    """Samples per inference: the configured window, else the model's time axis: shape (1, T, C)
    -> T; a flat (1, N) input -> N // channels."""
    if configured:
        return configured
    shape = spec.shape
    if len(shape) >= 3:
        return int(shape[1])
    n = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
    return max(1, n // max(channels, 1))


class _Window:
    def __init__(self, window: int, channels: int) -> None:
        self.buf = np.zeros((window, channels), np.float32)
        self.filled = 0

    def push(self, sample: np.ndarray) -> None:
        self.buf[:-1] = self.buf[1:]
        self.buf[-1] = sample
        self.filled = min(self.filled + 1, len(self.buf))


def _read_number(fh) -> float:
    fh.seek(0)
    return float(fh.read().strip())


class IioSource:
    name = "sensor"

    def __init__(self, device: str, channels: list[str], window: int) -> None:
        self.device = Path(device)
        self.channels = channels
        self._win = _Window(window, len(channels))
        self._raw: list = []
        self._scale = np.ones(len(channels), np.float64)
        self._offset = np.zeros(len(channels), np.float64)
        self._sample = np.zeros(len(channels), np.float64)

    def _calib(self, ch: str, kind: str, default: float) -> float:
        # per channel (in_accel_x_scale) first, then per type (in_accel_scale)
        typ = re.sub(r"_[^_]+$", "", ch)
        for name in (f"{ch}_{kind}", f"{typ}_{kind}"):
            p = self.device / name
            if p.exists():
                try:
                    return float(p.read_text().strip())
                except (OSError, ValueError):
                    raise SourceError("input.bad_data", f"{p}: not a number") from None
        return default

    def open(self) -> None:
        self.close()
        try:
            self._raw = [open(self.device / f"{ch}_raw", "r") for ch in self.channels]
        except OSError as e:
            self.close()
            raise SourceError("input.open_failed", f"{e.filename}: {e.strerror}") from None
        for i, ch in enumerate(self.channels):
            self._scale[i] = self._calib(ch, "scale", 1.0)
            self._offset[i] = self._calib(ch, "offset", 0.0)

    def read(self) -> np.ndarray:
        if not self._raw:
            raise SourceError("input.read_failed", f"{self.device}: not open")
        try:
            for i, fh in enumerate(self._raw):
                self._sample[i] = _read_number(fh)
        except OSError as e:
            raise SourceError("input.read_failed", f"{self.device}: {e.strerror}") from None
        except ValueError:
            raise SourceError("input.bad_data", f"{self.device}: a raw value is not a number") from None
        self._win.push((self._sample + self._offset) * self._scale)
        return self._win.buf

    def close(self) -> None:
        for fh in self._raw:
            fh.close()
        self._raw = []


class StreamSource:
    name = "sensor"

    def __init__(self, path: str, channels: int, window: int, delimiter: str = ",", timeout_s: float = 2.0) -> None:
        self.path = path
        self.delimiter = delimiter
        self.timeout_s = timeout_s
        self._nch = channels
        self._win = _Window(window, channels)
        self._fd: int | None = None
        self._buf = b""
        self.bad_lines = 0

    def open(self) -> None:
        self.close()
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise SourceError("input.open_failed", f"{self.path}: {e.strerror}") from None

    def _line(self) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceError("input.timeout", f"{self.path}: no data for {self.timeout_s:.1f} s")
            r, _, _ = select.select([self._fd], [], [], left)
            if not r:
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:  # writer closed the FIFO / end of a file: reopen (a file starts over)
                os.close(self._fd)
                self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
                time.sleep(0.01)
                continue
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def read(self) -> np.ndarray:
        if self._fd is None:
            raise SourceError("input.read_failed", f"{self.path}: not open")
        bad = 0
        while True:
            line = self._line().strip()
            try:
                vals = [float(v) for v in line.decode().split(self.delimiter)][: self._nch]
                if len(vals) < self._nch or not all(np.isfinite(vals)):
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                self.bad_lines += 1
                bad += 1
                if bad >= MAX_BAD_LINES:
                    raise SourceError("input.bad_data", f"{self.path}: {bad} bad lines in a row") from None
                continue
            self._win.push(np.asarray(vals))
            return self._win.buf

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._buf = b""
