"""anchor.json: a small file that only grows, beside state.json.

It holds the anti-rollback high-water marks and the sha256 of the last good models. If state.json
and its .prev are both lost, a rebuild keeps the high-water marks and marks good only a slot whose
file hashes to a model known good.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeagent.state.atomic import atomic_write_json
from edgeagent.state.model import State

KEEP = 8  # good models remembered


def read(path: Path) -> dict:
    try:
        a = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"high_water": {}, "good": []}
    hw = a.get("high_water") if isinstance(a, dict) else None
    good = a.get("good") if isinstance(a, dict) else None
    return {"high_water": {k: v for k, v in (hw or {}).items() if isinstance(k, str) and type(v) is int}
            if isinstance(hw, dict) else {},
            "good": [g for g in (good or []) if isinstance(g, dict) and isinstance(g.get("sha256"), str)
                     and type(g.get("version")) is int] if isinstance(good, list) else []}


def update(path: Path, st: State) -> None:
    """Merge what `st` knows: high-water marks only rise, good models are remembered."""
    a = read(path)
    hw = dict(a["high_water"])
    for k, v in st.high_water.items():
        hw[k] = max(int(v), int(hw.get(k, 0)))
    good = list(a["good"])
    known = {g["sha256"] for g in good}
    for info in st.slots.values():
        if info is not None and info.status == "good" and info.sha256 and info.sha256 not in known:
            good.append({"sha256": info.sha256, "model": info.model, "version": info.version or 0})
            known.add(info.sha256)
    new = {"high_water": hw, "good": good[-KEEP:]}
    if new != a:
        atomic_write_json(path, new, mode=0o640)
