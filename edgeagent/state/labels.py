"""A model's labels: a text file beside the model in its slot, so the two switch and roll back together.

Labels are slot contents, like the model file: parsed strictly (a label file is small, UTF-8,
one label per line), stored in one canonical form (`text_of`) and known by the sha256 of that
form, which the slot record and a signed manifest carry. Pure: no engine, no I/O but the file.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Sequence

from edgeagent.state.atomic import atomic_write, fsync_dir

FILE = "labels.txt"
MAX_BYTES = 64 * 1024  # 1,000 ImageNet labels are 10 KiB; the manifest stays one MQTT message
MAX_LABELS = 10_000
MAX_LABEL_CHARS = 200


class LabelsError(ValueError):
    """A label file or list that is not one: the message is one line, for the caller's code."""


def parse(text: str | bytes) -> tuple[str, ...]:
    """One label per line (a trailing newline and `\\r\\n` line ends are fine, surrounding spaces
    are dropped); UTF-8, at most MAX_BYTES, MAX_LABELS lines, no control characters."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_BYTES:
        raise LabelsError(f"{len(raw)} bytes, more than {MAX_BYTES}")
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LabelsError(f"not UTF-8 text (byte {e.start})") from None
    lines = s.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return check([line.rstrip("\r") for line in lines])


def check(names: Sequence[object]) -> tuple[str, ...]:
    out = []
    for i, n in enumerate(names):
        if not isinstance(n, str):
            raise LabelsError(f"label {i}: expected a string")
        n = n.strip()
        if any(ord(c) < 32 or ord(c) == 127 for c in n):
            raise LabelsError(f"label {i} (line {i + 1}): control characters")
        if len(n) > MAX_LABEL_CHARS:
            raise LabelsError(f"label {i} (line {i + 1}): longer than {MAX_LABEL_CHARS} characters")
        out.append(n)
    if not out:
        raise LabelsError("no labels")
    if len(out) > MAX_LABELS:
        raise LabelsError(f"{len(out)} labels, more than {MAX_LABELS}")
    return tuple(out)


def text_of(names: Sequence[str]) -> str:
    return "".join(n + "\n" for n in names)


def digest(names: Sequence[str]) -> str:
    return hashlib.sha256(text_of(names).encode()).hexdigest()


def read(path: str | os.PathLike) -> tuple[str, ...]:
    """The labels in a file, or LabelsError naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise LabelsError(f"{path}: {e.strerror or e}") from None
    try:
        return parse(raw)
    except LabelsError as e:
        raise LabelsError(f"{path}: {e}") from None


def beside(model_path: str | os.PathLike) -> Path:
    """Where a slot keeps the labels of the model at model_path."""
    return Path(model_path).parent / FILE


def load_beside(model_path: str | os.PathLike) -> tuple[str, ...] | None:
    """The labels stored beside a slot's model, None when it has none (or they are unreadable:
    a model serves without names rather than not at all)."""
    p = beside(model_path)
    if not p.is_file():
        return None
    try:
        return read(p)
    except LabelsError:
        return None


def digest_beside(model_path: str | os.PathLike) -> str | None:
    """The sha256 of the labels stored beside a slot's model, None when it has none."""
    names = load_beside(model_path)
    return digest(names) if names is not None else None


def write_beside(model_path: str | os.PathLike, names: Sequence[str] | None, mode: int = 0o444) -> str | None:
    """Store the labels beside a slot's model (durably), or remove stale ones; their sha256."""
    path = beside(model_path)
    if names is None:
        try:
            path.unlink()
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text_of(names).encode(), mode=mode)
    return digest(names)


def from_signed(v: object) -> tuple[str, ...]:
    """A manifest's `signed.labels`, {"names": [...], "sha256": of their canonical text}."""
    if not isinstance(v, dict) or set(v) != {"names", "sha256"}:
        raise LabelsError("expected {\"names\": [...], \"sha256\": ...}")
    if not isinstance(v["names"], list):
        raise LabelsError("names: expected a list of strings")
    names = check(v["names"])
    if list(names) != v["names"]:
        raise LabelsError("names: labels have surrounding spaces")
    if len(text_of(names).encode()) > MAX_BYTES:
        raise LabelsError(f"names: more than {MAX_BYTES} bytes")
    if v["sha256"] != digest(names):
        raise LabelsError("sha256: does not match the names")
    return names


def classes(shape: Sequence[int]) -> int | None:
    """The number of classes of a classifier-shaped output (every axis but the last is 1), else
    None: a detector's boxes or a feature map have no one label per value."""
    dims = [int(x) for x in shape]
    if len(dims) < 1 or dims[-1] < 2 or math.prod(dims[:-1]) != 1:
        return None
    return dims[-1]


def mismatch(names: Sequence[str], output_shape: Sequence[int]) -> str | None:
    """Why these labels do not fit output 0, or None. Only a classifier-shaped output is judged."""
    n = classes(output_shape)
    if n is not None and n != len(names):
        return f"{len(names)} labels for output 0 of shape {list(output_shape)} ({n} classes)"
    return None
