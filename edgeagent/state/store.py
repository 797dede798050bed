"""The A/B slot store: slots/{a,b}/model.tflite and state.json, and every transition between them.

Modelled on RAUC's slot status and mark-good/mark-bad, with Mender's rule for trials: an
unexpected restart during a trial is a failed trial. Each transition takes the state lock,
re-reads state.json, changes it and writes it atomically and durably (temp, fsync, rename, fsync
dir), keeping the previous good file as state.json.prev. Whatever instant the power goes, the
next start finds a state.json (or its .prev) naming a slot whose model verifies.

Slot status: good (confirmed), trial (serving on probation), bad (failed, or being written:
reason "installing"), empty.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeagent.errors import StateError
from edgeagent.state.atomic import atomic_write_json, copy_durable, sha256_file
from edgeagent.state.lock import StateLock

log = logging.getLogger("edgeagent.state")

SLOTS = ("a", "b")
STATUSES = ("good", "trial", "bad", "empty")
FORMAT = 1
ANCHOR_KEEP = 8  # good models remembered in the anchor file
SLOT_FILE_MODE = 0o444  # a slot's model is never modified in place: it is replaced whole, or not at all


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


@dataclass
class SlotInfo:
    model: str | None = None
    version: int | None = None
    sha256: str | None = None
    size: int | None = None
    installed_at: str | None = None
    status: str = "empty"
    reason: str | None = None
    health: dict | None = None


@dataclass
class State:
    active: str = "a"
    slots: dict = field(default_factory=lambda: {"a": None, "b": None})
    trial: dict | None = None
    high_water: dict = field(default_factory=dict)
    generation: int = 0
    last_rollback: dict | None = None
    # starts of the active slot's model since it last served a whole crash window (or stopped
    # cleanly): {"slot", "sha256", "count"}. RAUC's boot attempts, for committed models.
    boots: dict | None = None
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
                                  or not _is_int(boots.get("count", 0))):
            boots = None  # bookkeeping only: forget it rather than refuse the file
        return cls(active=d["active"], slots=slots, trial=trial, high_water=dict(hw), generation=gen,
                   last_rollback=lr if isinstance(lr, dict) else None, boots=boots)


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
    sha = v.get("sha256")
    if sha is not None and not (len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"slots.{name}.sha256: expected 64 hex digits")
    if v.get("status", "empty") not in STATUSES:
        raise ValueError(f"slots.{name}.status: expected one of {', '.join(STATUSES)}")
    if v.get("health") is not None and not isinstance(v["health"], dict):
        raise ValueError(f"slots.{name}.health: expected a table")
    return SlotInfo(**{f: v[f] for f in SlotInfo.__dataclass_fields__ if f in v})


@dataclass
class BootPlan:
    slot: str
    path: Path
    info: SlotInfo
    trial: dict | None
    events: list = field(default_factory=list)


class SlotStore:
    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.dir = Path(state_dir)
        self.file = self.dir / "state.json"
        self.prev = self.dir / "state.json.prev"
        # A second small file that only grows: the anti-rollback high-water marks and the sha256
        # of the last good models. If state.json and .prev are both lost, a rebuild keeps the
        # high-water marks and marks good only a slot whose file hashes to a model known good.
        self.anchor = self.dir / "anchor.json"
        self.lock = StateLock(self.dir)

    # -- paths and reading ------------------------------------------------------------------
    def slot_path(self, slot: str) -> Path:
        if slot not in SLOTS:  # never join a name from a file or a message into a path unchecked
            raise StateError("state.invalid", f"slot {slot!r}: expected a or b")
        return self.dir / "slots" / slot / "model.tflite"

    def _read_file(self, path: Path) -> State | None:
        try:
            return State.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            log.error("%s is unreadable (%s)", path, e)
            return None

    def state(self) -> State | None:
        """The current state (no lock: rename is atomic, a reader sees a whole file); .prev when
        state.json is missing or damaged."""
        st = self._read_file(self.file)
        if st is None:
            st = self._read_file(self.prev)
        return st

    def read_anchor(self) -> dict:
        try:
            a = json.loads(self.anchor.read_text())
        except (OSError, ValueError):
            return {"high_water": {}, "good": []}
        hw = a.get("high_water") if isinstance(a, dict) else None
        good = a.get("good") if isinstance(a, dict) else None
        return {"high_water": {k: v for k, v in (hw or {}).items() if isinstance(k, str) and type(v) is int}
                if isinstance(hw, dict) else {},
                "good": [g for g in (good or []) if isinstance(g, dict) and isinstance(g.get("sha256"), str)
                         and type(g.get("version")) is int] if isinstance(good, list) else []}

    def _update_anchor(self, st: State) -> None:
        a = self.read_anchor()
        hw = dict(a["high_water"])
        for k, v in st.high_water.items():
            hw[k] = max(int(v), int(hw.get(k, 0)))
        good = list(a["good"])
        known = {g["sha256"] for g in good}
        for info in st.slots.values():
            if info is not None and info.status == "good" and info.sha256 and info.sha256 not in known:
                good.append({"sha256": info.sha256, "model": info.model, "version": info.version or 0})
                known.add(info.sha256)
        new = {"high_water": hw, "good": good[-ANCHOR_KEEP:]}
        if new != a:
            atomic_write_json(self.anchor, new, mode=0o640)

    def verify_slot(self, slot: str, st: State | None = None) -> bool:
        """The slot's model file is there, read-only, and hashes to what state.json says."""
        st = st or self.state()
        info = st.slots.get(slot) if st else None
        p = self.slot_path(slot)
        if info is None or not info.sha256 or not p.is_file():
            return False
        if sha256_file(p) != info.sha256:
            return False
        mode = p.stat().st_mode
        if mode & 0o222:  # a serving model file is immutable; put right what an older version left
            log.warning("%s was writable (mode %o); made read-only", p, mode & 0o777)
            os.chmod(p, SLOT_FILE_MODE)
        return True

    def inactive_slot(self) -> str:
        st = self.state()
        return other(st.active) if st else "b"

    # -- writing ----------------------------------------------------------------------------
    def _write(self, st: State) -> None:
        st.generation += 1
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.file.exists() and self._read_file(self.file) is not None:
            atomic_write_json(self.prev, json.loads(self.file.read_text()), mode=0o640)
        # the high-water mark never goes down, whatever this state says
        anchor_hw = self.read_anchor()["high_water"]
        for k, v in anchor_hw.items():
            if int(st.high_water.get(k, 0)) < v:
                st.high_water[k] = v
        atomic_write_json(self.file, st.to_json(), mode=0o640)
        self._update_anchor(st)

    def _transition(self, change: Callable[[State], Any]) -> State:
        with self.lock:
            st = self.state()
            if st is None:
                raise StateError("state.no_model", f"{self.dir}: no state yet (the daemon seeds it on first start)")
            change(st)
            self._write(st)
            return st

    # -- boot -------------------------------------------------------------------------------
    def _seed(self, slot: str, initial: str, model_name: str, version: int) -> SlotInfo:
        if not initial:
            raise StateError("state.no_model", f"{self.dir}: no model installed; set model.initial to seed slot a",
                             exit_code=2)  # the configuration is at fault: systemd must not retry
        if not os.path.isfile(initial):
            raise StateError("state.no_model", f"model.initial {initial}: no such file", exit_code=2)
        self.slot_path(slot).parent.mkdir(parents=True, exist_ok=True)
        sha, size = copy_durable(initial, self.slot_path(slot), mode=SLOT_FILE_MODE)
        return SlotInfo(model_name, version, sha, size, now_rfc3339(), "good")

    def _recover(self, model_name: str) -> State | None:
        """state.json and .prev are both unreadable: rebuild from the slot files and the anchor.
        A slot is good only if its file hashes to a model the anchor knows was good; the
        high-water marks come back from the anchor, never lower."""
        a = self.read_anchor()
        known = {g["sha256"]: g for g in a["good"]}
        st = State(high_water=dict(a["high_water"]))
        found = False
        for s in SLOTS:
            p = self.slot_path(s)
            if not p.is_file():
                continue
            sha = sha256_file(p)
            g = known.get(sha)
            if g is not None:
                st.slots[s] = SlotInfo(g.get("model") or model_name, g["version"], sha, p.stat().st_size, now_rfc3339(),
                                       "good", "recovered without state.json")
                if not found:
                    st.active, found = s, True
            else:
                st.slots[s] = SlotInfo(model_name, None, sha, p.stat().st_size, now_rfc3339(), "bad",
                                       "unverified: state.json was lost and no record says this model was good")
        if not found and st.slots.get("a") is not None and st.slots.get("b") is None:
            st.active = "b"  # seed into the empty slot, keep the unverified file for inspection
        return st

    def _count_boot(self, st: State, max_crashes: int, events: list) -> None:
        """A committed model that keeps ending in a crash or a watchdog restart is rolled back
        while the other slot still holds the good model it replaced (RAUC's boot attempts).
        A start counts until the model has served a whole crash window or stopped cleanly."""
        cur = st.slots.get(st.active)
        b = st.boots or {}
        same = b.get("slot") == st.active and cur is not None and b.get("sha256") == cur.sha256
        count = int(b.get("count", 0)) + 1 if same else 1
        crashes = count - 1
        alt = other(st.active)
        alt_info = st.slots.get(alt)
        if crashes >= max_crashes and alt_info is not None and alt_info.status == "good" and self.verify_slot(alt, st):
            reason = f"crash_loop: {crashes} unclean restart(s) of this model before it served a whole crash window"
            frm = st.active
            cur.status, cur.reason = "bad", reason
            st.active = alt
            st.last_rollback = {"from": frm, "to": alt, "reason": reason, "at": now_rfc3339()}
            events.append({"event": "update.rolled_back", "version": cur.version, "to_version": alt_info.version,
                           "slot": alt, "reason": reason, "automatic": True})
            count = 1
        elif crashes >= max_crashes:
            log.error("slot %s crashed %d times in a row and the other slot holds no good model to go back to",
                      st.active, crashes)
        st.boots = {"slot": st.active, "sha256": (st.slots.get(st.active) or SlotInfo()).sha256, "count": count}

    def confirm_boot(self) -> None:
        """The active model served a whole crash window (or stopped cleanly): its starts so far
        were not crashes."""
        with self.lock:
            st = self.state()
            if st is None or st.trial or not st.boots or int(st.boots.get("count", 0)) == 0:
                return
            st.boots = {**st.boots, "count": 0}
            self._write(st)

    def boot(self, *, model_name: str, initial: str, initial_version: int, max_attempts: int,
             max_crashes: int = 3) -> BootPlan:
        """Decide which slot to serve at start, persisting every decision before it is acted on."""
        events: list[dict] = []
        with self.lock:
            st = self.state()
            if st is not None and self._read_file(self.file) is None:
                events.append({"event": "state.recovered", "reason": "state.json missing or damaged; restored from .prev"})
            if st is None and (self.file.exists() or self.prev.exists() or self.anchor.exists()):
                st = self._recover(model_name)
                events.append({"event": "state.recovered",
                               "reason": "state.json and .prev unreadable; rebuilt from the slots and anchor.json"})
                self._write(st)
            if st is None:  # first start
                st = State()
                st.slots["a"] = self._seed("a", initial, model_name, initial_version)
                st.high_water[model_name] = initial_version
                events.append({"event": "state.seeded", "slot": "a", "version": initial_version})
                self._write(st)
            if st.trial:
                t = st.trial
                t["attempts"] = int(t.get("attempts", 0)) + 1
                if t["attempts"] > max_attempts:
                    bad = st.slots.get(t["slot"])
                    reason = f"trial.restart_limit: {t['attempts'] - 1} restart(s) during probation"
                    if bad is not None:
                        bad.status, bad.reason = "bad", reason
                    st.active = t["from"]
                    st.trial = None
                    st.last_rollback = {"from": t["slot"], "to": st.active, "reason": reason, "at": now_rfc3339()}
                    events.append({"event": "update.rolled_back", "version": bad.version if bad else None,
                                   "reason": reason, "slot": st.active})
            else:
                self._count_boot(st, max_crashes, events)
            self._write(st)  # the attempt is counted before the model is loaded
            cur_info = st.slots.get(st.active)
            if cur_info is None or cur_info.status not in ("good", "trial") or not self.verify_slot(st.active, st):
                cur = st.active
                why = "missing" if not self.slot_path(cur).is_file() else \
                    ("not known good" if cur_info is None or cur_info.status not in ("good", "trial") else "sha256 mismatch")
                alt = other(cur)
                if self.verify_slot(alt, st) and st.slots[alt].status in ("good", "trial"):
                    if st.slots.get(cur) is not None and st.slots[cur].status != "bad":
                        st.slots[cur].status, st.slots[cur].reason = "bad", f"model file {why}"
                    if st.trial:
                        st.trial = None
                    st.active = alt
                    if st.slots[alt].status == "trial":
                        st.slots[alt].status = "good"
                    events.append({"event": "rollback", "reason": f"slot {cur}: model file {why}", "slot": alt})
                else:
                    info = self._seed(cur if st.slots.get(alt) else alt, initial, model_name, initial_version) \
                        if initial else None
                    if info is None:
                        raise StateError("state.no_valid_model", f"{self.dir}: no slot holds a model that verifies")
                    slot = cur if st.slots.get(alt) else alt
                    st.slots[slot] = info
                    st.active, st.trial = slot, None
                    events.append({"event": "state.seeded", "slot": slot, "reason": f"slot {cur}: {why}"})
                self._write(st)
            return BootPlan(st.active, self.slot_path(st.active), st.slots[st.active], st.trial, events)

    # -- install ----------------------------------------------------------------------------
    def prepare_target(self, slot: str) -> Path:
        """Mark the target slot bad("installing") BEFORE anything writes it; never the active one."""
        def change(st: State) -> None:
            if slot == st.active:
                raise StateError("state.slot_active", f"slot {slot} is active and cannot be written")
            if st.trial:
                raise StateError("state.trial_pending", "a model is on trial; commit or roll back first")
            st.slots[slot] = SlotInfo(status="bad", reason="installing")

        self._transition(change)
        self.slot_path(slot).parent.mkdir(parents=True, exist_ok=True)
        return self.slot_path(slot)

    def record_installed(self, slot: str, *, model: str, version: int, sha256: str, size: int,
                         health: dict | None) -> State:
        # Still "bad" until begin_trial switches to it: a crash here must keep the old slot serving.
        def change(st: State) -> None:
            st.slots[slot] = SlotInfo(model, version, sha256, size, now_rfc3339(), "bad",
                                      "installed, not switched to yet", health)

        return self._transition(change)

    def begin_trial(self, slot: str, *, probation_s: float, min_inferences: int, extra: dict | None = None) -> State:
        """One write: the slot becomes active on trial. The high-water version rises here, so a
        replayed older manifest is refused while the new model is on trial."""
        def change(st: State) -> None:
            info = st.slots.get(slot)
            if info is None or not info.sha256:
                raise StateError("state.slot_empty", f"slot {slot} holds no installed model")
            if slot == st.active:
                raise StateError("state.slot_active", f"slot {slot} is already active")
            st.trial = {"slot": slot, "from": st.active, "started_at": now_rfc3339(), "attempts": 0,
                        "probation_s": probation_s, "min_inferences": min_inferences, **(extra or {})}
            info.status, info.reason = "trial", None
            st.active = slot
            st.boots = {"slot": slot, "sha256": info.sha256, "count": 1}  # this run is the model's first start
            if info.model and info.version is not None:
                st.high_water[info.model] = max(int(st.high_water.get(info.model, 0)), int(info.version))

        return self._transition(change)

    def commit(self) -> State:
        def change(st: State) -> None:
            if not st.trial:
                raise StateError("state.no_trial", "no model is on trial")
            info = st.slots[st.trial["slot"]]
            info.status, info.reason = "good", None
            st.trial = None

        return self._transition(change)

    def rollback(self, reason: str, *, mark_bad: bool) -> State:
        """Switch to the other slot if its model verifies. A trial slot becomes bad with the reason."""
        def change(st: State) -> None:
            frm = st.active
            to = st.trial["from"] if st.trial else other(frm)
            info = st.slots.get(to)
            if info is None or info.status not in ("good", "trial") or not self.verify_slot(to, st):
                raise StateError("state.no_rollback_target", f"slot {to} holds no good model that verifies")
            cur = st.slots.get(frm)
            if cur is not None and (mark_bad or st.trial):
                cur.status, cur.reason = "bad", reason
            st.trial = None
            st.active = to
            st.last_rollback = {"from": frm, "to": to, "reason": reason, "at": now_rfc3339()}
            st.boots = {"slot": to, "sha256": info.sha256, "count": 1}

        return self._transition(change)

    def mark_bad(self, slot: str, reason: str) -> State:
        def change(st: State) -> None:
            if slot == st.active:
                raise StateError("state.slot_active", f"slot {slot} is active")
            info = st.slots.get(slot) or SlotInfo()
            info.status, info.reason = "bad", reason
            st.slots[slot] = info

        return self._transition(change)

    def set_health(self, slot: str, health: dict) -> State:
        def change(st: State) -> None:
            info = st.slots.get(slot)
            if info is not None:
                info.health = health

        return self._transition(change)

    # -- views ------------------------------------------------------------------------------
    def slots_table(self) -> dict:
        st = self.state() or State()
        rows = []
        for s in SLOTS:
            info = st.slots.get(s) or SlotInfo()
            rows.append({"slot": s, "role": "active" if s == st.active else "inactive", "status": info.status,
                         "model": info.model, "version": info.version, "sha256": info.sha256, "size": info.size,
                         "installed_at": info.installed_at, "health": info.health, "reason": info.reason})
        return {"active": st.active, "slots": rows, "trial": st.trial, "high_water": st.high_water}
