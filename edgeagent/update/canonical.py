"""Canonical JSON: the exact bytes a signature covers.

UTF-8, sorted keys, separators (",", ":"). Floats are refused: they have no single canonical
spelling across implementations, so a signed document carries integers and strings only.
"""

from __future__ import annotations

import json
from typing import Any


def _check(obj: Any, path: str = "signed") -> None:
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return
    if isinstance(obj, float):
        raise ValueError(f"{path}: floats have no canonical form")
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            _check(v, f"{path}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: keys must be strings")
            _check(v, f"{path}.{k}")
        return
    raise ValueError(f"{path}: {type(obj).__name__} is not JSON")


def canonical_bytes(obj: Any) -> bytes:
    _check(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
