"""The state file's records: slots, trial, high-water marks, and their strict parsing.

A state file is trusted for paths and decisions, so it is read field by field: a list where a
table belongs, a slot named "../../x" or a version of "1" is damage, not data.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeagent.record import MutableRecord

SLOTS = ("a", "b")
STATUSES = ("good", "trial", "staged", "bad", "empty")
FORMAT = 1


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


@dataclass(eq=False, repr=False)
class SlotInfo(MutableRecord):
    """What state.json says of one slot: enough to re-verify its file (sha256, size) at every start."""

    model: str | None = None
    version: int | None = None
    sha256: str | None = None
    size: int | None = None
    installed_at: str | None = None
    status: str = "empty"
    reason: str | None = None
    health: dict | None = None
    labels: str | None = None  # sha256 of the slot's labels.txt (state/labels.py), None: no labels


@dataclass(eq=False, repr=False)
class State(MutableRecord):
    """The whole of state.json: every transition writes a new one atomically, so a power cut
    leaves either the old state or the new, never a mix."""

    active: str = "a"
    slots: dict = field(default_factory=lambda: {"a": None, "b": None})
    trial: dict | None = None
    high_water: dict = field(default_factory=dict)
    generation: int = 0
    last_rollback: dict | None = None
    # starts of the active slot's model since it last served a whole crash window (or stopped
    # cleanly): {"slot", "sha256", "count"}. RAUC's boot attempts, for committed models.
    boots: dict | None = None
    # a verified, health-checked update waiting in the inactive slot for its switch window:
    # {"slot", "version", "sha256", "not_before", "switch_at", "staged_at", "terms"} (rules.stage)
    staged: dict | None = None
    format: int = FORMAT

    def to_json(self) -> dict:
        d = asdict(self)
        d["slots"] = {k: (asdict(v) if v is not None else None) for k, v in self.slots.items()}
        return d

    @classmethod
    def from_json(cls, d: Any) -> "State":
        """Field by field, or ValueError: a state file is trusted for paths and decisions, so a
        list where a table belongs, a slot named "../../x" or a version of "1" is damage, not data."""
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("active") not in SLOTS:
            raise ValueError("not an edgeagent state file")
        raw_slots = d.get("slots")
        if not isinstance(raw_slots, dict) or not set(raw_slots) <= set(SLOTS):
            raise ValueError("slots: expected a table with keys a and b")
        slots = {k: _slot_info(raw_slots.get(k), k) for k in SLOTS}
        trial = d.get("trial")
        if trial is not None:
            if not isinstance(trial, dict) or trial.get("slot") not in SLOTS or trial.get("from") not in SLOTS \
                    or trial["slot"] == trial["from"]:
                raise ValueError("trial: expected {slot, from} naming the two slots")
            _int_field(trial, "attempts", "trial", optional=True)
            _num_field(trial, "probation_s", "trial")
            _int_field(trial, "min_inferences", "trial", optional=True)
        hw = d.get("high_water") or {}
        if not isinstance(hw, dict) or not all(isinstance(k, str) and _is_int(v) and v >= 0 for k, v in hw.items()):
            raise ValueError("high_water: expected {model: version}")
        gen = d.get("generation", 0)
        if not _is_int(gen) or gen < 0:
            raise ValueError("generation: expected an integer >= 0")
        lr = d.get("last_rollback")
        boots = d.get("boots")
        if boots is not None and (not isinstance(boots, dict) or boots.get("slot") not in SLOTS
                                  or not _is_int(boots.get("count", 0))
                                  or not isinstance(boots.get("boot_id") or "", str)):
            boots = None  # bookkeeping only: forget it rather than refuse the file
        staged = d.get("staged")
        if staged is not None and (not isinstance(staged, dict) or staged.get("slot") not in SLOTS
                                   or staged["slot"] == d["active"] or not _is_int(staged.get("version"))
                                   or not isinstance(staged.get("terms"), dict)
                                   or (slots.get(staged["slot"]) or SlotInfo()).status != "staged"):
            staged = None  # not a staged slot (marked bad since, or damage): nothing switches to it
        return cls(active=d["active"], slots=slots, trial=trial, high_water=dict(hw), generation=gen,
                   last_rollback=lr if isinstance(lr, dict) else None, boots=boots, staged=staged)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_field(d: dict, k: str, where: str, optional: bool = True) -> None:
    v = d.get(k)
    if v is None and optional:
        return
    if not _is_int(v) or v < 0:
        raise ValueError(f"{where}.{k}: expected an integer >= 0")


def _num_field(d: dict, k: str, where: str) -> None:
    v = d.get(k)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10**9):
        raise ValueError(f"{where}.{k}: expected a number")


_SLOT_STR = ("model", "sha256", "installed_at", "reason")


def _slot_info(v: Any, name: str) -> SlotInfo | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ValueError(f"slots.{name}: expected a table")
    for k in _SLOT_STR:
        if v.get(k) is not None and not isinstance(v[k], str):
            raise ValueError(f"slots.{name}.{k}: expected a string")
    for k in ("version", "size"):
        _int_field(v, k, f"slots.{name}")
    for k in ("sha256", "labels"):
        sha = v.get(k)
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                    and all(c in "0123456789abcdef" for c in sha)):
            raise ValueError(f"slots.{name}.{k}: expected 64 hex digits")
    if v.get("status", "empty") not in STATUSES:
        raise ValueError(f"slots.{name}.status: expected one of {', '.join(STATUSES)}")
    if v.get("health") is not None and not isinstance(v["health"], dict):
        raise ValueError(f"slots.{name}.health: expected a table")
    return SlotInfo(**{f: v[f] for f in SlotInfo.__dataclass_fields__ if f in v})


@dataclass(eq=False, repr=False)
class BootPlan(MutableRecord):
    """Which slot a start serves and why; the events it decided on are emitted by the caller."""

    slot: str
    path: Path
    info: SlotInfo
    trial: dict | None
    events: list = field(default_factory=list)


