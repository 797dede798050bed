"""Build a BSDIFF4 delta on the publisher side, the fast way when the model kept its layout.

`bsdiff4.diff` suffix-sorts the whole old model and holds old, new and the sort in memory: 174 s
and 3.6 GiB for a 200 MB model. A fine-tune rewrites weights where they are: same size, same
offsets. For that case one BSDIFF4 control triple (add len(new) bytes from the diff block, copy
none from the extra block, seek 0) with a diff block of (new - old) mod 256 is a valid patch,
applied byte for byte by `bsdiff4.patch` and by the device's streaming patcher, and it compresses
to the same size as bsdiff4's own (unchanged bytes become runs of zeros that bzip2 collapses).
It is computed in one streaming pass over both files in bounded memory.

When the layout changed (a different size, or most bytes differ in place: a shifted tensor),
bsdiff4's search for moved blocks is what makes the delta small, so it is used instead. When both
are cheap (small models) both are built and the smaller one is kept.
"""

from __future__ import annotations

import bz2
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from bsdiff4.core import encode_int64

from edgeagent.state.atomic import create_new

MAGIC = b"BSDIFF40"
CHUNK = 4 << 20
CHEAP_BYTES = 8 << 20  # below this, bsdiff4.diff takes a few seconds: build both, keep the smaller
IN_PLACE_MAX_CHANGED = 0.5  # more bytes than this differing in place: the layout moved
METHODS = ("auto", "inplace", "bsdiff4")

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Delta:
    """A delta written to `path` and how it was made."""

    path: Path
    size: int
    method: str  # "inplace" or "bsdiff4"
    seconds: float
    changed_fraction: float | None  # bytes that differ in place (inplace pass only)


def inplace_delta(old_path: Path, new_path: Path, out_path: Path, progress: Progress | None = None) -> Delta:
    """Write the one-triple BSDIFF4 patch of two files of the same size; O(CHUNK) memory."""
    t0 = time.perf_counter()
    n = os.stat(new_path).st_size
    if os.stat(old_path).st_size != n:
        raise ValueError("an in-place delta needs a base and a target of the same size")
    control = bz2.compress(encode_int64(n) + encode_int64(0) + encode_int64(0))
    comp = bz2.BZ2Compressor(9)
    changed = done = len_diff = 0
    with open(old_path, "rb") as fo_old, open(new_path, "rb") as fo_new, \
            os.fdopen(create_new(out_path, 0o644), "wb") as out:
        out.write(b"\0" * 32)  # the header needs the diff block's length: written last
        out.write(control)
        while True:
            a, b = fo_old.read(CHUNK), fo_new.read(CHUNK)
            if not b:
                break
            if len(a) != len(b):
                raise ValueError("the base changed size while the delta was built")
            d = np.frombuffer(b, np.uint8) - np.frombuffer(a, np.uint8)  # uint8 wraps: mod 256
            changed += int(np.count_nonzero(d))
            c = comp.compress(d.tobytes())
            out.write(c)
            len_diff += len(c)
            done += len(b)
            if progress:
                progress("diff", 100.0 * done / max(n, 1))
        c = comp.flush()
        out.write(c)
        len_diff += len(c)
        out.write(bz2.compress(b""))  # the empty extra block
        size = out.tell()
        out.seek(0)
        out.write(MAGIC + encode_int64(len(control)) + encode_int64(len_diff) + encode_int64(n))
    return Delta(Path(out_path), size, "inplace", time.perf_counter() - t0, changed / n if n else 0.0)


def bsdiff_delta(old_path: Path, new_path: Path, out_path: Path, progress: Progress | None = None) -> Delta:
    """bsdiff4.diff on the whole files (memory: old + new + a suffix array of old)."""
    import bsdiff4

    t0 = time.perf_counter()
    if progress:
        progress("diff (bsdiff4)", 0.0)
    data = bsdiff4.diff(Path(old_path).read_bytes(), Path(new_path).read_bytes())
    with os.fdopen(create_new(out_path, 0o644), "wb") as out:
        out.write(data)
    if progress:
        progress("diff (bsdiff4)", 100.0)
    return Delta(Path(out_path), len(data), "bsdiff4", time.perf_counter() - t0, None)


def build_delta(old_path: Path, new_path: Path, work: Path, *, method: str = "auto",
                progress: Progress | None = None) -> Delta:
    """The delta to ship, written under `work` (a name of its own; the caller renames it).

    auto: in place when the sizes match and at most half the bytes differ; bsdiff4 otherwise;
    both when the model is under CHEAP_BYTES, keeping the smaller."""
    if method not in METHODS:
        raise ValueError(f"unknown delta method {method!r}")
    old_path, new_path, work = Path(old_path), Path(new_path), Path(work)
    same = os.stat(old_path).st_size == os.stat(new_path).st_size
    if method == "inplace" and not same:
        raise ValueError("--delta inplace needs a base and a target of the same size")
    fast = inplace_delta(old_path, new_path, work.with_name(work.name + ".inplace"), progress) \
        if method == "inplace" or (method == "auto" and same) else None
    if method == "inplace" or (fast is not None and os.stat(new_path).st_size > CHEAP_BYTES
                               and fast.changed_fraction <= IN_PLACE_MAX_CHANGED):
        return _keep(fast, work)
    slow = bsdiff_delta(old_path, new_path, work.with_name(work.name + ".bsdiff4"), progress)
    if fast is None or slow.size <= fast.size:
        if fast is not None:
            fast.path.unlink()
        return _keep(slow, work)
    slow.path.unlink()
    return _keep(fast, work)


def _keep(d: Delta, work: Path) -> Delta:
    os.replace(d.path, work)
    return Delta(work, d.size, d.method, d.seconds, d.changed_fraction)
