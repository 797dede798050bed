"""Chunked payload transfer over MQTT, stored on disk so a restart resumes it.

Chunks (P/transfer/{id}/{index}) are written into one preallocated file at index * chunk_size;
which chunks are present is a small JSON bitmap written atomically. Chunks may come in any
order and more than once; missing() says what to ask for again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from edgeagent.errors import CommandError
from edgeagent.state.atomic import atomic_write_json, fsync_dir
from edgeagent.update.errors import UpdateRejected

_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Transfer:
    def __init__(self, d: Path, chunks: int, size: int, sha256: str) -> None:
        self.dir = d
        self.chunks, self.size, self.sha256 = chunks, size, sha256
        self.data = d / "data"
        self.meta = d / "state.json"
        self.have: set[int] = set()
        self.chunk_size: int | None = None
        if self.meta.exists():
            try:
                m = json.loads(self.meta.read_text())
                if (m["chunks"], m["size"], m["sha256"]) == (chunks, size, sha256):
                    self.have = set(m["have"])
                    self.chunk_size = m["chunk_size"]
            except (OSError, ValueError, KeyError):
                self.have = set()
        if not self.data.exists() or self.data.stat().st_size != size:
            with open(self.data, "wb") as fh:
                fh.truncate(size)
            self.have = set()
        self._fh = open(self.data, "r+b")
        self._unsaved = 0

    def _save(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        atomic_write_json(self.meta, {"chunks": self.chunks, "size": self.size, "sha256": self.sha256,
                                      "chunk_size": self.chunk_size, "have": sorted(self.have)})
        self._unsaved = 0

    def add(self, index: int, data: bytes) -> bool:
        """Store one chunk; False if it was a duplicate. Bad chunks raise UpdateRejected."""
        if not 0 <= index < self.chunks:
            raise UpdateRejected("update.malformed", f"chunk {index} out of range 0..{self.chunks - 1}")
        if index in self.have:
            return False
        last = index == self.chunks - 1
        if self.chunk_size is None and not last:
            self.chunk_size = len(data)
        if self.chunk_size is None:  # only the last chunk so far: its size fixes the others'
            if self.chunks > 1 and (self.size - len(data)) % (self.chunks - 1):
                raise UpdateRejected("update.malformed", "chunk sizes do not add up to the payload size")
            self.chunk_size = (self.size - len(data)) // (self.chunks - 1) if self.chunks > 1 else len(data)
        expect = self.size - self.chunk_size * (self.chunks - 1) if last else self.chunk_size
        if len(data) != expect or expect <= 0:
            raise UpdateRejected("update.malformed", f"chunk {index} is {len(data)} bytes, expected {expect}")
        self._fh.seek(index * self.chunk_size)
        self._fh.write(data)
        self.have.add(index)
        self._unsaved += 1
        if self._unsaved >= 32 or self.complete:
            self._save()
        return True

    def missing(self) -> list[int]:
        return [i for i in range(self.chunks) if i not in self.have]

    @property
    def complete(self) -> bool:
        return len(self.have) == self.chunks

    def progress(self) -> float:
        return 100.0 * len(self.have) / self.chunks

    def assemble(self) -> Path:
        """Verify the whole payload; return its path in staging."""
        self._save()
        self._fh.close()
        h = hashlib.sha256()
        with open(self.data, "rb") as fh:
            for b in iter(lambda: fh.read(1 << 20), b""):
                h.update(b)
        if h.hexdigest() != self.sha256:
            for p in (self.data, self.meta):
                p.unlink(missing_ok=True)
            raise UpdateRejected("update.payload_hash", "assembled payload sha256 differs from the manifest")
        final = self.dir.parent / f"{self.sha256}.payload"
        os.replace(self.data, final)
        self.meta.unlink(missing_ok=True)
        self.dir.rmdir()
        fsync_dir(final.parent)
        return final


class TransferStore:
    def __init__(self, staging_dir: str | os.PathLike) -> None:
        self.dir = Path(staging_dir)

    def begin(self, transfer_id: str, chunks: int, expected_size: int, expected_sha256: str) -> Transfer:
        if not isinstance(transfer_id, str) or not _ID.match(transfer_id):
            raise CommandError("cmd.bad_args", "args.transfer.id: must match [A-Za-z0-9._-]{1,64}")
        if chunks < 1 or chunks > expected_size:
            raise CommandError("cmd.bad_args", f"args.transfer.chunks: {chunks} chunks for {expected_size} bytes")
        d = self.dir / f"transfer-{transfer_id}"
        d.mkdir(parents=True, exist_ok=True)
        return Transfer(d, chunks, expected_size, expected_sha256)
