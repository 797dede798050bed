"""Chunked payload transfer over MQTT, stored on disk so a restart resumes it.

Chunks (P/transfer/{id}/{index}) are written into one preallocated file at index * chunk_size
under staging/transfer-{id}/; which chunks are present is a small JSON bitmap written
atomically after the data is fsynced (so the bitmap never claims a chunk the disk lacks). Chunks
may come in any order and more than once; missing() says what to ask for again. All chunks
have one size except the last, which may be shorter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from edgeagent.errors import CommandError, TransportError
from edgeagent.state.atomic import atomic_write_json, fsync_dir
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.staging import no_space

_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SAVE_EVERY = 32  # chunks between bitmap writes; a crash loses at most these, and they are re-requested
SAVE_AFTER_S = 1.0


def _preallocate(path: Path, size: int) -> None:
    """Reserve the blocks now, so a full disk is found at begin(), not at chunk 3000."""
    with open(path, "wb") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, size)
        except OSError as e:
            if no_space(e, path):
                fh.close()
                path.unlink(missing_ok=True)
                raise no_space(e, path) from None
            fh.truncate(size)  # a filesystem without fallocate: sparse is the best we can do


class Transfer:
    def __init__(self, d: Path, chunks: int, size: int, sha256: str) -> None:
        self.dir = d
        self.chunks, self.size, self.sha256 = chunks, size, sha256
        self.data = d / "data"
        self.meta = d / "state.json"
        self.have: set[int] = set()
        self.chunk_size: int | None = None
        resumed = False
        if self.meta.exists():
            try:
                m = json.loads(self.meta.read_text())
                if (m["chunks"], m["size"], m["sha256"]) == (chunks, size, sha256):
                    self.have = {int(i) for i in m["have"] if 0 <= int(i) < chunks}
                    self.chunk_size = m["chunk_size"]
                    resumed = True
            except (OSError, ValueError, KeyError, TypeError):
                pass
        if not resumed or not self.data.exists() or self.data.stat().st_size != size:
            _preallocate(self.data, size)
            self.have, self.chunk_size = set(), None
        self._fh = open(self.data, "r+b")
        self._unsaved, self._saved_at = 0, time.monotonic()
        if not resumed:
            self._save()  # the new parameters replace any old bitmap at once

    def _save(self) -> None:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            atomic_write_json(self.meta, {"chunks": self.chunks, "size": self.size, "sha256": self.sha256,
                                          "chunk_size": self.chunk_size, "have": sorted(self.have)})
        except OSError as e:
            raise (no_space(e, self.dir) or e) from None
        self._unsaved, self._saved_at = 0, time.monotonic()

    def _chunk_size_from(self, index: int, n: int) -> int:
        """The common chunk size implied by chunk `index` being n bytes, or UpdateRejected."""
        last = index == self.chunks - 1
        if self.chunks == 1:
            cs = n
        elif not last:
            cs = n
        elif (self.size - n) % (self.chunks - 1) == 0:
            cs = (self.size - n) // (self.chunks - 1)
        else:
            cs = 0
        tail = self.size - cs * (self.chunks - 1)
        if cs <= 0 or not 0 < tail <= cs:
            raise UpdateRejected("update.malformed", f"chunk {index} is {n} bytes: {self.chunks} chunks of that size "
                                                     f"cannot make {self.size} bytes")
        return cs

    def add(self, index: int, data: bytes) -> bool:
        """Store one chunk; False if it was a duplicate. Bad chunks raise UpdateRejected."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.chunks:
            raise UpdateRejected("update.malformed", f"chunk {index} out of range 0..{self.chunks - 1}")
        if index in self.have:
            return False
        cs = self.chunk_size if self.chunk_size is not None else self._chunk_size_from(index, len(data))
        expect = self.size - cs * (self.chunks - 1) if index == self.chunks - 1 else cs
        if len(data) != expect:
            raise UpdateRejected("update.malformed", f"chunk {index} is {len(data)} bytes, expected {expect}")
        self.chunk_size = cs
        try:
            self._fh.seek(index * cs)
            self._fh.write(data)
        except OSError as e:
            raise (no_space(e, self.dir) or e) from None
        self.have.add(index)
        self._unsaved += 1
        if self._unsaved >= SAVE_EVERY or self.complete or time.monotonic() - self._saved_at >= SAVE_AFTER_S:
            self._save()
        return True

    def missing(self) -> list[int]:
        return [i for i in range(self.chunks) if i not in self.have]

    @property
    def complete(self) -> bool:
        return len(self.have) == self.chunks

    def progress(self) -> dict:
        """Same shape as the fetcher's progress, plus chunk counts."""
        n = len(self.have)
        done = self.size if self.complete else n * (self.chunk_size or 0)
        return {"phase": "download", "bytes": min(done, self.size), "total": self.size,
                "chunks": n, "of": self.chunks, "percent": round(100.0 * n / self.chunks, 1)}

    def close(self) -> None:
        """Save the bitmap and release the file (what a clean stop does; assemble() does it too)."""
        if not self._fh.closed:
            self._save()
            self._fh.close()

    def assemble(self) -> Path:
        """Verify the whole payload; return its path in staging. A wrong result is deleted."""
        if not self.complete:
            raise TransportError("download.failed", f"transfer {self.dir.name}: {self.chunks - len(self.have)} "
                                                    f"of {self.chunks} chunks missing")
        self.close()
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

    def __enter__(self) -> "Transfer":
        return self

    def __exit__(self, *exc) -> None:
        if not self._fh.closed:
            self.close()


class TransferStore:
    def __init__(self, staging_dir: str | os.PathLike) -> None:
        self.dir = Path(staging_dir)

    def begin(self, transfer_id: str, chunks: int, expected_size: int, expected_sha256: str) -> Transfer:
        """Start, or pick up after a restart, the transfer with this id (same parameters: same state)."""
        if not isinstance(transfer_id, str) or not _ID.match(transfer_id):
            raise CommandError("cmd.bad_args", "args.transfer.id: must match [A-Za-z0-9._-]{1,64}")
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1 or chunks > max(expected_size, 1):
            raise CommandError("cmd.bad_args", f"args.transfer.chunks: {chunks} chunks for {expected_size} bytes")
        d = self.dir / f"transfer-{transfer_id}"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Transfer(d, chunks, expected_size, expected_sha256)
