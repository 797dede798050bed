"""Atomic, durable small-file writes.

python-tuf lost metadata with rename-without-fsync: after a power cut the rename can reach the
disk before the data. The order here is the one that survives: write a temp file in the same
directory, fsync it, rename it over the target, fsync the directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
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
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
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
