"""Build the new model in the inactive slot: a bsdiff4 patch of the active model, or a raw copy.

The base is hashed BEFORE patching: a base that differs by one byte is refused, never patched
(Mender users hit this). The result is written to a temp name, fsynced, renamed, and its sha256
and size checked; a wrong result is removed. bsdiff4.patch holds the old model, the patch and
the new model in memory at once: peak memory is about old + new + patch (see
scripts/bench_patch.py for measured figures).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import bsdiff4

from edgeagent.state.atomic import fsync_dir
from edgeagent.update.errors import UpdateRejected


def _write_verified(data: bytes | None, out_path: Path, target_sha256: str, target_size: int,
                    src: Path | None = None) -> None:
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    h = hashlib.sha256()
    size = 0
    with open(tmp, "wb") as fo:
        if data is not None:
            fo.write(data)
            h.update(data)
            size = len(data)
        else:
            with open(src, "rb") as fi:
                for b in iter(lambda: fi.read(1 << 20), b""):
                    fo.write(b)
                    h.update(b)
                    size += len(b)
        fo.flush()
        os.fsync(fo.fileno())
    if size != target_size or h.hexdigest() != target_sha256:
        tmp.unlink()
        raise UpdateRejected("update.target_hash", f"the new model is {size} bytes with sha256 {h.hexdigest()[:12]}, "
                                                   f"manifest says {target_size} bytes, {target_sha256[:12]}")
    os.replace(tmp, out_path)
    fsync_dir(out_path.parent)


def apply_delta(base_path: Path, base_sha256: str, patch_path: Path, out_path: Path, *,
                target_sha256: str, target_size: int) -> None:
    old = Path(base_path).read_bytes()
    if hashlib.sha256(old).hexdigest() != base_sha256:
        raise UpdateRejected("update.wrong_base", f"{base_path}: sha256 differs from the delta's base")
    patch = Path(patch_path).read_bytes()
    try:
        new = bsdiff4.patch(old, patch)
    except Exception as e:  # noqa: BLE001 - bsdiff4 raises ValueError/RuntimeError on bad patches
        raise UpdateRejected("update.bad_patch", f"bsdiff4 refused the patch: {e}") from None
    del old, patch
    _write_verified(new, out_path, target_sha256, target_size)


def copy_full(payload_path: Path, out_path: Path, *, target_sha256: str, target_size: int) -> None:
    _write_verified(None, out_path, target_sha256, target_size, src=Path(payload_path))
