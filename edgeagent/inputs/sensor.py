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
import stat
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


def model_channels(spec: TensorSpec) -> int | None:
    """The channel axis of a (1, T, C) input; None for a flat (1, N) one (any divisor fits)."""
    return int(spec.shape[-1]) if len(spec.shape) >= 3 else None


def check_columns(what: str, columns: int, spec: TensorSpec) -> None:
    want = model_channels(spec)
    n = int(np.prod(spec.shape[1:])) if len(spec.shape) > 1 else int(spec.shape[0])
    if (want is not None and columns != want) or (want is None and n % columns):
        takes = f"{want} channels" if want is not None else f"{n} values (a multiple of the columns)"
        raise SourceError("input.shape_mismatch", f"{what}: {columns} columns per sample, the model's input "
                                                  f"{tuple(spec.shape)} takes {takes}")


class StreamSource:
    """CSV lines from a FIFO, a serial device or a file, one sample per line.

    The number of columns is the first good line's, checked against the model's channel axis
    (input.shape_mismatch); later lines with another count are bad lines. From a live stream
    (FIFO, tty, socket) each read() drains what is waiting and the window holds the newest
    samples: a producer faster than rate_hz never builds a lag, and what was skipped is counted
    in `dropped`. A regular file is a recording: it is replayed a line per read() and starts
    over at its end.
    """

    name = "sensor"

    def __init__(self, path: str, spec: TensorSpec, window: int = 0, delimiter: str = ",",
                 timeout_s: float = 2.0) -> None:
        self.path = path
        self.spec = spec
        self.delimiter = delimiter
        self.timeout_s = timeout_s
        self._configured_window = window
        self._nch: int | None = None
        self._win: _Window | None = None
        self._fd: int | None = None
        self._live = False
        self._buf = b""
        self.bad_lines = 0
        self.dropped = 0  # samples of a live stream that were never in a window (newer ones were)

    def open(self) -> None:
        self.close()
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise SourceError("input.open_failed", f"{self.path}: {e.strerror}") from None
        self._live = not stat.S_ISREG(os.fstat(self._fd).st_mode)

    def _fill(self, block: bool) -> None:
        """Read what is waiting into the buffer; with `block`, wait until a line is complete."""
        if not self._live and b"\n" in self._buf:
            return  # a recording: one line at a time, the file is not slurped
        deadline = time.monotonic() + self.timeout_s
        while True:
            if not block or b"\n" in self._buf:
                r, _, _ = select.select([self._fd], [], [], 0)
                if not r:
                    return
            else:
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
                if not block or b"\n" in self._buf:
                    return
                time.sleep(0.01)
                continue
            self._buf += chunk
            if not self._live:
                if b"\n" in self._buf:
                    return
                continue
            self._trim()

    def _trim(self) -> None:
        """Keep at most a window of complete lines (plus a partial one) buffered: memory stays
        bounded whatever the producer's rate, and the skipped lines are counted."""
        keep = max(self._win_len(), 1)
        lines = self._buf.split(b"\n")  # the last part is the partial line (maybe empty)
        if len(lines) - 1 > keep:
            self.dropped += len(lines) - 1 - keep
            self._buf = b"\n".join(lines[-(keep + 1):])

    def _win_len(self) -> int:
        if self._win is not None:
            return len(self._win.buf)
        return self._configured_window or (int(self.spec.shape[1]) if len(self.spec.shape) >= 3 else 1)

    def _parse(self, line: bytes) -> list[float] | None:
        try:
            vals = [float(v) for v in line.decode().strip().split(self.delimiter)]
        except (ValueError, UnicodeDecodeError):
            return None
        if not vals or not all(np.isfinite(vals)):
            return None
        if self._nch is None:
            check_columns(self.path, len(vals), self.spec)
            self._nch = len(vals)
            self._win = _Window(window_for(self.spec, self._nch, self._configured_window), self._nch)
        return vals if len(vals) == self._nch else None

    def read(self) -> np.ndarray:
        if self._fd is None:
            raise SourceError("input.read_failed", f"{self.path}: not open")
        bad = 0
        pushed = 0
        while True:
            self._fill(block=pushed == 0)
            if b"\n" not in self._buf:
                return self._win.buf  # drained: at least one new sample went in
            line, self._buf = self._buf.split(b"\n", 1)
            vals = self._parse(line)
            if vals is None:
                self.bad_lines += 1
                bad += 1
                if bad >= MAX_BAD_LINES:
                    raise SourceError("input.bad_data", f"{self.path}: {bad} bad lines in a row") from None
                continue
            bad = 0
            self._win.push(np.asarray(vals))
            pushed += 1
            if not self._live:
                return self._win.buf

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._buf = b""
