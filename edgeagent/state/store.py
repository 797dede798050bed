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
FORMAT = 1
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
    def from_json(cls, d: dict) -> "State":
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("active") not in SLOTS:
            raise ValueError("not an edgeagent state file")
        slots = {k: (SlotInfo(**v) if v else None) for k, v in (d.get("slots") or {}).items() if k in SLOTS}
        for k in SLOTS:
            slots.setdefault(k, None)
        return cls(active=d["active"], slots=slots, trial=d.get("trial"), high_water=dict(d.get("high_water") or {}),
                   generation=int(d.get("generation", 0)), last_rollback=d.get("last_rollback"),
                   boots=d.get("boots") if isinstance(d.get("boots"), dict) else None)


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
        self.lock = StateLock(self.dir)

    # -- paths and reading ------------------------------------------------------------------
    def slot_path(self, slot: str) -> Path:
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
        """The current state (no lock: rename is atomic, a reader sees a whole file)."""
        st = self._read_file(self.file)
        if st is None and self.file.exists():
            st = self._read_file(self.prev)
        return st

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
        atomic_write_json(self.file, st.to_json(), mode=0o640)

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
            raise StateError("state.no_model", f"{self.dir}: no model installed; set model.initial to seed slot a")
        if not os.path.isfile(initial):
            raise StateError("state.no_model", f"model.initial {initial}: no such file")
        self.slot_path(slot).parent.mkdir(parents=True, exist_ok=True)
        sha, size = copy_durable(initial, self.slot_path(slot), mode=SLOT_FILE_MODE)
        return SlotInfo(model_name, version, sha, size, now_rfc3339(), "good")

    def _recover(self, model_name: str) -> State | None:
        """state.json and .prev are both unreadable: rebuild from whatever slot file exists."""
        st = State()
        found = False
        for s in SLOTS:
            p = self.slot_path(s)
            if p.is_file():
                st.slots[s] = SlotInfo(model_name, 0, sha256_file(p), p.stat().st_size, now_rfc3339(), "good",
                                       "recovered without state.json")
                if not found:
                    st.active, found = s, True
        return st if found else None

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
            if st is None and (self.file.exists() or self.prev.exists()):
                st = self._recover(model_name)
                if st is not None:
                    events.append({"event": "state.recovered", "reason": "state.json unreadable; rebuilt from the slots"})
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
            if not self.verify_slot(st.active, st):
                cur = st.active
                why = "missing" if not self.slot_path(cur).is_file() else "sha256 mismatch"
                alt = other(cur)
                if self.verify_slot(alt, st) and st.slots[alt].status in ("good", "trial"):
                    if st.slots.get(cur) is not None:
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
