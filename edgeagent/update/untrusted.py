"""Untrusted JSON text -> a parsed document, safely: bounded size and nesting, numbers a C or JS
consumer can hold, no NaN or Infinity; every failure one UpdateRejected with a stable code, never
RecursionError, OverflowError or one of Python's own ValueErrors."""

from __future__ import annotations

import json
from typing import Any

from edgeagent.update.errors import UpdateRejected

# A manifest may carry a golden set (reference inputs), so it is larger than TUF's metadata;
# still small enough for one MQTT message and the device's memory.
MAX_ENVELOPE_BYTES = 512 * 1024
MAX_DEPTH = 16  # a real envelope nests 7 deep; json.loads recurses, and 100,000 '[' fit in 512 KiB
MAX_INT = 2**63 - 1  # what every consumer of these numbers (C, JSON in other languages) can hold


def _bad(msg: str) -> UpdateRejected:
    return UpdateRejected("update.malformed", msg)


def _depth_of_text(raw: str) -> int:
    """The deepest bracket nesting of JSON text, outside strings: checked before json.loads,
    which recurses once per level and raises RecursionError (not ValueError) near 1000."""
    depth = deepest = 0
    in_str = esc = False
    for ch in raw:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _check_tree(obj: Any) -> None:
    """Depth and number ranges of an already-parsed document, iteratively (no recursion)."""
    stack = [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > MAX_DEPTH:
                raise UpdateRejected("update.too_deep", f"manifest nests deeper than {MAX_DEPTH} levels")
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
        elif isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        elif isinstance(v, int):
            if not -MAX_INT <= v <= MAX_INT:
                raise UpdateRejected("update.number_range", f"manifest holds an integer beyond +-{MAX_INT}")
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise UpdateRejected("update.number_range", "manifest holds a number that is not finite")
        else:
            raise _bad(f"manifest holds a {type(v).__name__}, which is not JSON")


def _no_constant(name: str) -> Any:
    raise UpdateRejected("update.number_range", f"manifest holds {name}, which is not a JSON number")


def load_untrusted(raw: bytes | str) -> Any:
    """Untrusted JSON text -> a parsed document, or UpdateRejected: never RecursionError,
    OverflowError or a ValueError of Python's own (4300-digit integers, NaN, Infinity)."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise _bad(f"manifest is {len(raw)} bytes, limit {MAX_ENVELOPE_BYTES}")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _bad(f"manifest is not UTF-8: {e.reason}") from None
    if _depth_of_text(raw) > MAX_DEPTH:
        raise UpdateRejected("update.too_deep", f"manifest nests deeper than {MAX_DEPTH} levels")
    try:
        doc = json.loads(raw, parse_constant=_no_constant)
    except UpdateRejected:
        raise
    except (ValueError, RecursionError) as e:
        if "digits" in str(e):  # int() refuses more than 4300 digits
            raise UpdateRejected("update.number_range", "manifest holds an integer with too many digits") from None
        raise _bad(f"manifest is not JSON: {e}") from None
    _check_tree(doc)
    return doc
