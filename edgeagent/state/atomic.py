"""Atomic, durable small-file writes.

python-tuf lost metadata with rename-without-fsync: after a power cut the rename can reach the
disk before the data. The order here is the one that survives: write a temp file in the same
directory, fsync it, rename it over the target, fsync the directory.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_new(path: str | os.PathLike, mode: int = 0o600, flags: int = os.O_WRONLY) -> int:
    """Open a fresh file at `path` with O_CREAT|O_EXCL|O_NOFOLLOW: whatever was planted at the
    name (a stale temp file, or a symlink to /etc/shadow) is unlinked first, which removes the
    link and never touches its target, and the new file cannot be a link."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def open_regular(path: str | os.PathLike, flags: int, mode: int = 0o600) -> int:
    """Open an existing file to resume it (O_NOFOLLOW), or a new one; a symlink or anything but a
    regular file at the name is removed and replaced by a new empty file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return create_new(path, mode, flags)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        return create_new(path, mode, flags)  # a symlink: never followed
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return create_new(path, mode, flags)
    return fd


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = create_new(tmp, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode)


def copy_durable(src: str | os.PathLike, dst: str | os.PathLike, chunk: int = 1 << 20,
                 mode: int | None = None) -> tuple[str, int]:
    """Copy src to dst atomically and durably (with `mode` when given); return (sha256 hex, size)."""
    import hashlib

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fi, os.fdopen(create_new(tmp, 0o600), "wb") as fo:
        while True:
            b = fi.read(chunk)
            if not b:
                break
            h.update(b)
            fo.write(b)
            size += len(b)
        fo.flush()
        if mode is not None:
            os.fchmod(fo.fileno(), mode)
        os.fsync(fo.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
    return h.hexdigest(), size


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
