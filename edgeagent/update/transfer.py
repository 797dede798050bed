"""Chunked payload transfer over MQTT, stored on disk so a restart resumes it.

The publisher announces the transfer with the update command: `{"id", "chunks", "chunk_size",
"chunk_sha256": [hex, ...]}`. The announcement is checked against the signed manifest (chunk
count = ceil(size / chunk_size)), so a message cannot make the device track 52 million chunks.
Each chunk (P/transfer/{id}/{index}) is checked against its announced sha256 before it is
written: an injected or damaged chunk is dropped and asked for again, it never fails the update.
The whole payload is still checked against the signed sha256 at the end.

Chunks are written into one preallocated file at index * chunk_size under
staging/transfer-{id}/; which chunks are present is a bitmap (chunks / 8 bytes) saved atomically
after the data is fsynced, so it never claims a chunk the disk lacks.

Between the network thread and the transfer sits ChunkInbox: bounded in bytes
(`update.max_chunk_buffer_bytes`), never blocking the network thread; what does not fit is
dropped and asked for again.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeagent.errors import CommandError, TransportError
from edgeagent.state.atomic import atomic_write_json, fsync_dir, open_regular
from edgeagent.transport.topics import transfer_id_ok
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.staging import no_space

MIN_CHUNK = 1024
SAVE_EVERY = 32  # chunks between bitmap writes; a crash loses at most these, and they are re-requested
SAVE_AFTER_S = 1.0
EARLY_TTL_S = 60.0  # chunks that came before their command are kept this long


@dataclass(frozen=True)
class Announce:
    """A transfer as the update command announces it (checked, not yet against the manifest)."""

    id: str
    chunks: int
    chunk_size: int
    chunk_sha256: tuple[str, ...]

    @classmethod
    def from_args(cls, t: object) -> "Announce":
        def bad(msg: str) -> CommandError:
            return CommandError("cmd.bad_args", f"args.transfer.{msg}")

        if not isinstance(t, dict):
            raise CommandError("cmd.bad_args", 'args.transfer: expected {"id", "chunks", "chunk_size", "chunk_sha256"}')
        if not transfer_id_ok(t.get("id")):
            raise bad("id: must match [A-Za-z0-9._-]{1,64}")
        n, cs, hashes = t.get("chunks"), t.get("chunk_size"), t.get("chunk_sha256")
        if type(n) is not int or n < 1:
            raise bad("chunks: expected an integer >= 1")
        if type(cs) is not int or cs < MIN_CHUNK:
            raise bad(f"chunk_size: required, an integer >= {MIN_CHUNK}")
        if not isinstance(hashes, list) or len(hashes) != n:
            raise bad(f"chunk_sha256: required, a list of {n} sha256 hex digests (one per chunk)")
        for i, h in enumerate(hashes):
            if not isinstance(h, str) or len(h) != 64 or not all(c in "0123456789abcdef" for c in h):
                raise bad(f"chunk_sha256[{i}]: expected 64 lower-case hex digits")
        return cls(t["id"], n, cs, tuple(hashes))

    def check(self, size: int, max_chunk: int) -> None:
        """Against the signed payload size and the MQTT message bound."""
        if self.chunk_size > max_chunk:
            raise CommandError("cmd.bad_args", f"args.transfer.chunk_size: {self.chunk_size} > mqtt.max_message_bytes "
                                               f"{max_chunk}")
        want = -(-size // self.chunk_size)
        if self.chunks != want:
            raise CommandError("cmd.bad_args", f"args.transfer.chunks: {self.chunks}, but {size} bytes in chunks of "
                                               f"{self.chunk_size} make {want}")

    def to_args(self) -> dict:
        return {"id": self.id, "chunks": self.chunks, "chunk_size": self.chunk_size,
                "chunk_sha256": list(self.chunk_sha256)}


class ChunkInbox:
    """From the network thread to the transfer: bounded in bytes, never blocks the producer.

    While no transfer is active, chunks are held for a short while (they may come just before
    their command) within a quarter of the bound; while one is active, chunks of other ids are
    dropped."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cv = threading.Condition()
        self._q: collections.deque = collections.deque()
        self.held = 0
        self.dropped = 0
        self.active: str | None = None

    def put(self, tid: str, index: int, data: bytes) -> bool:
        now = time.monotonic()
        with self._cv:
            if self.active is not None and tid != self.active:
                self.dropped += 1
                return False
            if self.active is None:
                self._expire(now)
            cap = self.max_bytes if self.active is not None else self.max_bytes // 4
            if self.held + len(data) > cap:
                self.dropped += 1
                return False
            self._q.append((tid, index, data, now))
            self.held += len(data)
            self._cv.notify()
            return True

    def _expire(self, now: float) -> None:
        while self._q and now - self._q[0][3] > EARLY_TTL_S:
            self.held -= len(self._q.popleft()[2])

    def activate(self, tid: str | None) -> None:
        """Serve chunks of `tid` only (None: none); what other transfers left is dropped."""
        with self._cv:
            self.active = tid
            keep = collections.deque(x for x in self._q if tid is not None and x[0] == tid)
            self.dropped += len(self._q) - len(keep)
            self._q = keep
            self.held = sum(len(x[2]) for x in keep)

    def get(self, timeout: float) -> tuple[int, bytes] | None:
        with self._cv:
            if not self._q:
                self._cv.wait(timeout)
            if not self._q:
                return None
            tid, index, data, _ = self._q.popleft()
            self.held -= len(data)
            return index, data


class Transfer:
    def __init__(self, d: Path, ann: Announce, size: int, sha256: str) -> None:
        self.dir = d
        self.ann = ann
        self.chunks, self.size, self.sha256, self.chunk_size = ann.chunks, size, sha256, ann.chunk_size
        self.data = d / "data"
        self.meta = d / "state.json"
        self.bits = bytearray((ann.chunks + 7) // 8)
        self.count = 0
        self.bad = 0  # chunks dropped: wrong hash, wrong size, out of range
        params = {"chunks": ann.chunks, "chunk_size": ann.chunk_size, "size": size, "sha256": sha256,
                  "hashes": hashlib.sha256("".join(ann.chunk_sha256).encode()).hexdigest()}
        self._params = params
        resumed = False
        try:
            m = json.loads(self.meta.read_text())
            if isinstance(m, dict) and {k: m.get(k) for k in params} == params:
                bits = base64.b64decode(m.get("have", ""), validate=True)
                if len(bits) == len(self.bits):
                    self.bits = bytearray(bits)
                    self.count = sum(bin(b).count("1") for b in self.bits)
                    resumed = True
        except (OSError, ValueError, TypeError, binascii.Error):
            pass
        fd = open_regular(self.data, os.O_RDWR)  # never through a planted symlink
        self._fh = os.fdopen(fd, "r+b")
        if not resumed or os.fstat(fd).st_size != size:
            self.bits, self.count = bytearray(len(self.bits)), 0
            self._preallocate()
            self._save()  # the new parameters replace any old bitmap at once
        self._unsaved, self._saved_at = 0, time.monotonic()

    def _preallocate(self) -> None:
        """Reserve the blocks now, so a full disk is found at the start, not at chunk 3000."""
        fd = self._fh.fileno()
        os.ftruncate(fd, 0)
        try:
            os.posix_fallocate(fd, 0, self.size)
        except OSError as e:
            err = no_space(e, self.data)
            if err:
                raise err from None
            os.ftruncate(fd, self.size)  # a filesystem without fallocate: sparse is the best we can do

    def _save(self) -> None:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            atomic_write_json(self.meta, {**self._params, "have": base64.b64encode(bytes(self.bits)).decode()},
                              mode=0o600)
        except OSError as e:
            raise (no_space(e, self.dir) or e) from None
        self._unsaved, self._saved_at = 0, time.monotonic()

    def has(self, i: int) -> bool:
        return bool(self.bits[i >> 3] & (1 << (i & 7)))

    def add(self, index: int, data: bytes) -> bool:
        """Store one chunk. False (and counted in `bad`) for a chunk that is not the announced
        one: out of range, wrong size or wrong sha256. A duplicate is False, not bad."""
        if type(index) is not int or not 0 <= index < self.chunks:
            self.bad += 1
            return False
        if self.has(index):
            return False
        expect = self.chunk_size if index < self.chunks - 1 else self.size - self.chunk_size * (self.chunks - 1)
        if len(data) != expect or hashlib.sha256(data).hexdigest() != self.ann.chunk_sha256[index]:
            self.bad += 1
            return False
        try:
            os.pwrite(self._fh.fileno(), data, index * self.chunk_size)
        except OSError as e:
            raise (no_space(e, self.dir) or e) from None
        self.bits[index >> 3] |= 1 << (index & 7)
        self.count += 1
        self._unsaved += 1
        if self._unsaved >= SAVE_EVERY or self.complete or time.monotonic() - self._saved_at >= SAVE_AFTER_S:
            self._save()
        return True

    def missing(self, limit: int = 512) -> list[int]:
        """The first `limit` missing indices (the bitmap is scanned a byte at a time)."""
        out: list[int] = []
        for byte_i, b in enumerate(self.bits):
            if b == 0xFF:
                continue
            for bit in range(8):
                i = byte_i * 8 + bit
                if i >= self.chunks:
                    return out
                if not b & (1 << bit):
                    out.append(i)
                    if len(out) >= limit:
                        return out
        return out

    @property
    def missing_count(self) -> int:
        return self.chunks - self.count

    @property
    def complete(self) -> bool:
        return self.count == self.chunks

    def progress(self) -> dict:
        done = min(self.size, self.count * self.chunk_size)
        return {"phase": "download", "bytes": done, "total": self.size, "chunks": self.count, "of": self.chunks,
                "percent": round(100.0 * self.count / self.chunks, 1)}

    def close(self) -> None:
        """Save the bitmap and release the file (what a clean stop does; assemble() does it too)."""
        if not self._fh.closed:
            try:
                self._save()
            finally:
                self._fh.close()

    def assemble(self, dest: Path) -> Path:
        """Verify the whole payload against the signed sha256; move it to dest. A wrong result is
        deleted (every chunk matched its announced hash, so the announcement was wrong)."""
        if not self.complete:
            raise TransportError("download.failed", f"transfer {self.ann.id}: {self.missing_count} of "
                                                    f"{self.chunks} chunks missing")
        self.close()
        h = hashlib.sha256()
        with open(self.data, "rb") as fh:
            for b in iter(lambda: fh.read(1 << 20), b""):
                h.update(b)
        if h.hexdigest() != self.sha256:
            self.discard()
            raise UpdateRejected("update.payload_hash", f"transfer {self.ann.id}: sha256 differs from the manifest")
        os.replace(self.data, dest)
        fsync_dir(dest.parent)
        self.discard()
        return dest

    def discard(self) -> None:
        self.close()
        for p in (self.data, self.meta):
            p.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass


def begin(staging_dir: Path, ann: Announce, size: int, sha256: str) -> Transfer:
    """Start, or pick up after a restart, the transfer with this id (same parameters: same state)."""
    d = Path(staging_dir) / f"transfer-{ann.id}"
    if d.is_symlink():
        d.unlink()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Transfer(d, ann, size, sha256)


def announce(data: bytes, transfer_id: str, chunk_size: int) -> tuple[Announce, list[bytes]]:
    """The publisher's side: split a payload into chunks and announce them (with their hashes)."""
    chunk_size = max(MIN_CHUNK, chunk_size)
    chunks = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    return Announce(transfer_id, len(chunks), chunk_size, tuple(hashlib.sha256(c).hexdigest() for c in chunks)), chunks
