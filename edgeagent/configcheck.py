"""The checks a config field carries in its metadata (config.py's schema): one line saying what
a value must be, or None."""

from __future__ import annotations

from dataclasses import field
from typing import Any, Callable

Check = Callable[[Any], "str | None"]


def _check(fn: Check, **kw: Any) -> Any:
    return field(metadata={"check": fn}, **kw)


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(map(repr, choices))}"


def _min(lo: float, inclusive: bool = True) -> Check:
    def check(v: Any) -> str | None:
        ok = v >= lo if inclusive else v > lo
        return None if ok else f"must be {'>=' if inclusive else '>'} {lo}"

    return check


def _range(lo: float, hi: float) -> Check:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}"


def _rate(v: float) -> str | None:
    """0 (as fast as possible) or 0.1..1000 Hz: a rate of 1e-11 Hz overflows the loop's sleep,
    0.01 Hz starves the watchdog."""
    return None if v == 0 or 0.1 <= v <= 1000 else "must be 0 (as fast as possible) or between 0.1 and 1000"


def _listen(v: str) -> str | None:
    if not v:
        return None
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "expected HOST:PORT (127.0.0.1:9101 for this machine only, 0.0.0.0:9101 for the LAN)"
    return None
