"""A manifest's golden set (`signed.health.golden`): reference examples the health child runs.

Pure: the schema only (a base64 .npz of at most 256 KiB decoded, a pass threshold, a tolerance);
`update/health.py` loads and runs it in the child.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

MAX_GOLDEN_BYTES = 256 * 1024  # the decoded npz


@dataclass(frozen=True)
class Golden:
    npz_b64: str
    min_pass_pct: int
    tol_e6: int = 1000

    def to_dict(self) -> dict:
        return {"npz_b64": self.npz_b64, "min_pass_pct": self.min_pass_pct, "tol_e6": self.tol_e6}


def _int(v: Any, path: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{path}: expected an integer {lo} to {hi}")
    return v


def parse(v: Any, path: str = "signed.health.golden") -> Golden:
    """ValueError naming the field for anything that is not a golden set."""
    if not isinstance(v, dict) or not {"npz_b64", "min_pass_pct"} <= set(v) <= {"npz_b64", "min_pass_pct", "tol_e6"}:
        raise ValueError(f"{path}: expected npz_b64 and min_pass_pct (and tol_e6)")
    b64 = v["npz_b64"]
    if not isinstance(b64, str) or not b64:
        raise ValueError(f"{path}.npz_b64: expected a base64 string")
    if len(b64) > (MAX_GOLDEN_BYTES * 4) // 3 + 4:
        raise ValueError(f"{path}.npz_b64: larger than {MAX_GOLDEN_BYTES} bytes decoded")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{path}.npz_b64: not valid base64") from None
    if not raw.startswith(b"PK"):
        raise ValueError(f"{path}.npz_b64: not an .npz (zip) file")
    pct = _int(v["min_pass_pct"], f"{path}.min_pass_pct", 1, 100)
    tol = _int(v["tol_e6"], f"{path}.tol_e6", 0, 1_000_000_000) if "tol_e6" in v else 1000
    return Golden(b64, pct, tol)
