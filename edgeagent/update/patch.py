"""Build the new model in the inactive slot: a bsdiff4 patch of the active model, or a raw copy.

The base is hashed BEFORE patching: a base that differs by one byte is refused, never patched
(Mender users hit this). The result is written to a temp name, fsynced, renamed, and its sha256
and size checked; a wrong result is removed.

Patches are in the BSDIFF4 format the `bsdiff4` package writes, but they are applied here as a
stream: bsdiff4.patch() holds the old model, the decompressed diff block (about the size of the
new model) and the new model in memory at once, 1.6 x (old + new) measured. Here the old model is
read in bounded pieces where the control block points (pread: no mmap, whose touched pages count
in the process's RSS until the kernel reclaims them), the diff and extra blocks are decompressed
incrementally, and the new model goes to disk in 1 MiB pieces while it is hashed, so the memory
needed stays flat as models grow (scripts/bench_patch.py). tests/update check it produces
byte-for-byte what bsdiff4.patch does.
"""

from __future__ import annotations

import bz2
import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from bsdiff4.core import decode_int64

from edgeagent.state.atomic import create_new, fsync_dir
from edgeagent.update.encryption import Identity, decrypt_to, open_plain
from edgeagent.update.errors import UpdateRejected


CHUNK = 1 << 20
MAGIC = b"BSDIFF40"


class _Bz2Stream:
    """Decompress one bz2 block of a patch on demand, in bounded pieces, from a forward reader
    positioned at the block (a plain file, or a decrypting stream for an encrypted payload)."""

    def __init__(self, reader: Any, length: int) -> None:
        self.reader, self.left = reader, length
        self.d = bz2.BZ2Decompressor()
        self.buf = bytearray()

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = b""
            if self.d.needs_input:
                if self.left <= 0 or self.d.eof:
                    raise ValueError("truncated bsdiff4 patch")
                chunk = self.reader.read(min(CHUNK, self.left))
                if not chunk:
                    raise ValueError("truncated bsdiff4 patch")
                self.left -= len(chunk)
            self.buf += self.d.decompress(chunk, max_length=CHUNK)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def stream_patch(old_path: Path, patch_path: Path, fo, h, expect_size: int | None = None, *,
                 open_at: Callable[[int], Any] | None = None, size: int | None = None) -> int:
    """Apply a BSDIFF4 patch of old_path, writing the result to fo and hashing it into h.
    open_at(offset): a forward reader of the patch from offset (default: the file itself);
    size: the patch's length (default: the file's)."""
    if open_at is None:
        open_at = open_plain(Path(patch_path), None)
        size = os.stat(patch_path).st_size
    assert size is not None
    readers: list[Any] = []

    def at(offset: int) -> Any:
        readers.append(open_at(offset))
        return readers[-1]

    try:
        return _patch(old_path, at, size, fo, h, expect_size)
    finally:
        for r in readers:
            r.close()


def _patch(old_path: Path, at: Callable[[int], Any], total: int, fo, h, expect_size: int | None) -> int:
    with open(old_path, "rb") as fold:
        fp = at(0)
        head = fp.read(32)
        if len(head) < 32 or head[:8] != MAGIC:
            raise ValueError("not a bsdiff4 patch")
        len_control, len_diff, len_new = (decode_int64(head[i:i + 8]) for i in (8, 16, 24))
        if min(len_control, len_diff, len_new) < 0 or 32 + len_control + len_diff > total:
            raise ValueError("bad bsdiff4 header")
        control = bz2.decompress(fp.read(len_control))
        fp.close()
        if len(control) % 24:
            raise ValueError("invalid control block")
        if expect_size is not None and len_new != expect_size:
            raise ValueError(f"the patch builds {len_new} bytes, the manifest's target is {expect_size}")
        diff = _Bz2Stream(at(32 + len_control), len_diff)
        extra = _Bz2Stream(at(32 + len_control + len_diff), total - 32 - len_control - len_diff)
        old_fd = fold.fileno()
        old_size = os.fstat(old_fd).st_size
        newpos = oldpos = 0
        for i in range(0, len(control), 24):
            x, y, z = (decode_int64(control[i + k:i + k + 8]) for k in (0, 8, 16))
            if x < 0 or y < 0 or newpos + x + y > len_new:
                raise ValueError("corrupt bsdiff4 control block")
            while x:  # new = diff + old, byte by byte modulo 256
                k = min(x, CHUNK)
                seg = np.frombuffer(diff.read(k), np.uint8).copy()
                lo, hi = max(oldpos, 0), min(oldpos + k, old_size)
                if lo < hi:
                    old = os.pread(old_fd, hi - lo, lo)
                    if len(old) != hi - lo:
                        raise ValueError("the base model changed while it was patched")
                    seg[lo - oldpos:hi - oldpos] += np.frombuffer(old, np.uint8)
                b = seg.tobytes()
                fo.write(b)
                h.update(b)
                x -= k
                oldpos += k
                newpos += k
            while y:  # bytes that are simply new
                k = min(y, CHUNK)
                b = extra.read(k)
                fo.write(b)
                h.update(b)
                y -= k
                newpos += k
            oldpos += z
        if newpos != len_new:
            raise ValueError("the patch does not produce the size it announces")
        return newpos


def _write_verified(out_path: Path, target_sha256: str, target_size: int, write) -> None:
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    h = hashlib.sha256()
    with os.fdopen(create_new(tmp, 0o600), "wb") as fo:  # never through a planted symlink
        try:
            size = write(fo, h)
        except BaseException:
            fo.close()
            tmp.unlink()
            raise
        fo.flush()
        os.fchmod(fo.fileno(), 0o444)  # a slot's model is immutable once written
        os.fsync(fo.fileno())
    if size != target_size or h.hexdigest() != target_sha256:
        tmp.unlink()
        raise UpdateRejected("update.target_hash", f"the new model is {size} bytes with sha256 {h.hexdigest()[:12]}, "
                                                   f"manifest says {target_size} bytes, {target_sha256[:12]}")
    os.replace(tmp, out_path)
    fsync_dir(out_path.parent)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(CHUNK), b""):
            h.update(b)
    return h.hexdigest()


def apply_delta(base_path: Path, base_sha256: str, patch_path: Path, out_path: Path, *,
                target_sha256: str, target_size: int, check: Callable[[], None] = lambda: None,
                identity: Identity | None = None, plain_size: int | None = None) -> None:
    """identity: the payload is age-encrypted (plain_size: the patch's size once decrypted); it
    is decrypted as it is patched, never written anywhere in plain."""
    if _sha256_file(Path(base_path)) != base_sha256:
        raise UpdateRejected("update.wrong_base", f"{base_path}: sha256 differs from the delta's base")

    def write(fo, h) -> int:
        try:
            if identity is None:
                return stream_patch(Path(base_path), Path(patch_path), _Checked(fo, check), h, expect_size=target_size)
            return stream_patch(Path(base_path), Path(patch_path), _Checked(fo, check), h, expect_size=target_size,
                                open_at=open_plain(Path(patch_path), identity), size=plain_size)
        except UpdateRejected:
            raise
        except (ValueError, OSError, EOFError) as e:
            raise UpdateRejected("update.bad_patch", f"the bsdiff4 patch does not apply: {e}") from None

    _write_verified(out_path, target_sha256, target_size, write)


class _Checked:
    """A file whose every write first asks whether the update was cancelled."""

    def __init__(self, fo, check: Callable[[], None]) -> None:
        self.fo, self.check = fo, check

    def write(self, b: bytes) -> int:
        self.check()
        return self.fo.write(b)


def copy_full(payload_path: Path, out_path: Path, *, target_sha256: str, target_size: int,
              check: Callable[[], None] = lambda: None, identity: Identity | None = None) -> None:
    def write(fo, h) -> int:
        size = 0
        if identity is not None:  # decrypted straight into the slot's temp file
            done = [0]

            def put(b: bytes) -> None:
                check()
                if done[0] + len(b) > target_size:
                    raise UpdateRejected("update.target_hash", f"the payload decrypts to more than the "
                                                               f"manifest's {target_size} bytes")
                fo.write(b)
                h.update(b)
                done[0] += len(b)

            decrypt_to(Path(payload_path), identity, put)
            return done[0]
        with open(payload_path, "rb") as fi:
            for b in iter(lambda: fi.read(CHUNK), b""):
                check()
                fo.write(b)
                h.update(b)
                size += len(b)
        return size

    _write_verified(out_path, target_sha256, target_size, write)
