"""Input samples kept for retraining: a bounded ring of files under state_dir/samples (opt-in).

Each sample is two files: the input (`ID.png` for a pixel frame, `ID.csv` for a sensor window,
`ID.npy` otherwise) and `ID.json` (when, which model version, why, its outputs' top classes).
Written atomically; before each write the oldest samples go until the new one fits, so the ring
never holds more than max_bytes. On disk under the state directory, never in tmpfs: a Pi has little RAM.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from edgeagent.state.atomic import atomic_write

_ID = re.compile(r"\A\d{13}-\d{1,9}\Z")
KINDS = ("png", "csv", "npy")


class SampleError(ValueError):
    pass


class SampleStore:
    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        self._seq = 0
        self._lock = threading.Lock()

    def add(self, data: bytes, ext: str, meta: dict) -> str:
        if ext not in KINDS:
            raise SampleError(f"unknown sample kind {ext!r}")
        with self._lock:
            self._seq += 1
            sid = f"{int(meta['ts'] * 1000):013d}-{self._seq}"
            record = json.dumps({**meta, "id": sid, "kind": ext, "bytes": len(data)}, sort_keys=True).encode()
            if len(data) + len(record) > self.max_bytes:
                raise SampleError(f"a sample of {len(data)} bytes does not fit capture_max_bytes {self.max_bytes}")
            self._trim(self.max_bytes - len(data) - len(record))  # room first: the ring never holds more
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.dir / f"{sid}.{ext}", data, mode=0o640)
            atomic_write(self.dir / f"{sid}.json", record, mode=0o640)
        return sid

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.dir.iterdir() if p.is_file() and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def _trim(self, limit: int) -> None:
        files = self._files()
        total = sum(p.stat().st_size for p in files)
        for p in files:  # names sort oldest first (millisecond stamp, then sequence)
            if total <= limit:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)

    def list(self) -> list[dict]:
        out = []
        for p in self._files():
            if p.suffix == ".json":
                try:
                    out.append(json.loads(p.read_text()))
                except (OSError, ValueError):
                    continue
        return out

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._files())

    def get(self, sid: str) -> tuple[dict, bytes]:
        if not isinstance(sid, str) or not _ID.match(sid):  # never join a name from a message into a path unchecked
            raise SampleError(f"{sid!r}: not a sample id")
        try:
            meta = json.loads((self.dir / f"{sid}.json").read_text())
            return meta, (self.dir / f"{sid}.{meta['kind']}").read_bytes()
        except (OSError, ValueError, KeyError):
            raise SampleError(f"no sample {sid}") from None

    def clear(self) -> int:
        with self._lock:
            files = self._files()
            for p in files:
                p.unlink(missing_ok=True)
            return sum(1 for p in files if p.suffix == ".json")
