"""Where a .tflite model keeps its tensors' data: each buffer's byte range in the file, with the
name and shape of the tensor that uses it (for tensor-aligned deltas, update/delta.py).

Only the flatbuffer's tables are read, a 4 KiB page at a time with pread, never the weights and
never through an mmap (a page-cache mapping faults in whole large folios, a MiB or two per table
touched, so reading 100 small tables of a 200 MB model through one counted 100 MiB of RSS). The
field numbers are TFLite's schema.fbs: Model.subgraphs = 2 and buffers = 4, SubGraph.tensors = 0,
Tensor.shape = 0, buffer = 2, name = 3, Buffer.data = 0 and, for buffers stored after the
flatbuffer (models over 2 GB), offset = 1 and size = 2.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

PAGE = 4096


@dataclass(frozen=True)
class BufferRef:
    index: int
    name: str  # the first tensor using the buffer ("" when none names it)
    shape: tuple[int, ...]
    offset: int  # in the file
    size: int


class _Flat:
    """A flatbuffer read through pread, its pages kept (a model's tables are a few dozen pages)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size, self._pages = fd, size, {}

    def raw(self, off: int, n: int) -> bytes:
        if off < 0 or off + n > self.size:
            raise ValueError("not a TFLite flatbuffer (an offset points outside the file)")
        out = b""
        while n > 0:
            p, k = divmod(off, PAGE)
            page = self._pages.get(p)
            if page is None:
                page = self._pages[p] = os.pread(self.fd, PAGE, p * PAGE)
            take = min(n, PAGE - k)
            out += page[k:k + take]
            off, n = off + take, n - take
        return out

    def get(self, fmt: str, off: int) -> int:
        return struct.unpack("<" + fmt, self.raw(off, struct.calcsize(fmt)))[0]

    def field(self, table: int, index: int) -> int:
        """The absolute position of a table's field, 0 when absent."""
        vt = table - self.get("i", table)
        vt_len = self.get("H", vt)
        slot = 4 + 2 * index
        rel = self.get("H", vt + slot) if slot < vt_len else 0
        return table + rel if rel else 0

    def ref(self, pos: int) -> int:
        return pos + self.get("I", pos)

    def vector(self, pos: int) -> tuple[int, int]:
        """(start of the elements, count) of the vector a field at pos points to."""
        v = self.ref(pos)
        return v + 4, self.get("I", v)


def buffers(path: str | Path) -> list[BufferRef]:
    """The non-empty data buffers of a model, in file order; ValueError when it is no TFLite model."""
    fd = os.open(path, os.O_RDONLY)
    try:
        f = _Flat(fd, os.fstat(fd).st_size)
        if f.size < 8 or f.raw(4, 4) != b"TFL3":
            raise ValueError(f"{path}: not a TFLite flatbuffer")
        model = f.ref(0)
        users: dict[int, tuple[str, tuple[int, ...]]] = {}
        sgs = f.field(model, 2)
        for si in range(f.vector(sgs)[1] if sgs else 0):
            sg = f.ref(f.vector(sgs)[0] + 4 * si)
            tens = f.field(sg, 0)
            start, count = f.vector(tens) if tens else (0, 0)
            for ti in range(count):
                t = f.ref(start + 4 * ti)
                bpos = f.field(t, 2)
                bi = f.get("I", bpos) if bpos else 0
                if not bi or bi in users:
                    continue
                npos, spos = f.field(t, 3), f.field(t, 0)
                name = ""
                if npos:
                    s0, n = f.vector(npos)
                    name = f.raw(s0, n).decode(errors="replace")
                shape: tuple[int, ...] = ()
                if spos:
                    s0, n = f.vector(spos)
                    shape = struct.unpack(f"<{n}i", f.raw(s0, 4 * n))
                users[bi] = (name, tuple(int(x) for x in shape))
        out = []
        bufs = f.field(model, 4)
        start, count = f.vector(bufs) if bufs else (0, 0)
        for bi in range(count):
            b = f.ref(start + 4 * bi)
            dpos = f.field(b, 0)
            if dpos:
                off, size = f.vector(dpos)
            else:  # stored after the flatbuffer (large models): offset/size fields
                opos, zpos = f.field(b, 1), f.field(b, 2)
                off = f.get("Q", opos) if opos else 0
                size = f.get("Q", zpos) if zpos else 0
            if size:
                name, shape = users.get(bi, ("", ()))
                out.append(BufferRef(bi, name, shape, int(off), int(size)))
    except struct.error:
        raise ValueError(f"{path}: not a TFLite flatbuffer") from None
    finally:
        os.close(fd)
    return sorted(out, key=lambda r: r.offset)
