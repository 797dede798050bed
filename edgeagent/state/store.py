"""The A/B slot store: slots/{a,b}/model.tflite and state.json, and every transition between them.

Modelled on RAUC's slot status and mark-good/mark-bad, with Mender's rule for trials: an
unexpected restart during a trial is a failed trial. Each transition takes the state lock,
re-reads state.json, changes it and writes it atomically and durably (temp, fsync, rename, fsync
dir), keeping the previous good file as state.json.prev. Whatever instant the power goes, the
next start finds a state.json (or its .prev) naming a slot whose model verifies.

Slot status: good (confirmed), trial (serving on probation), staged (verified and health-checked,
waiting for its switch window), bad (failed, or being written: reason "installing"), empty.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from edgeagent.errors import StateError
from edgeagent.state import anchor, labels, rules
from edgeagent.state.atomic import atomic_write_json, copy_durable, sha256_file
from edgeagent.state.lock import StateLock
from edgeagent.state.model import SLOTS, STATUSES, BootPlan, SlotInfo, State, now_rfc3339, other
from edgeagent.state.rules import TrialTerms
from edgeagent.state.timefloor import TimeFloor, parse_utc

__all__ = ["SLOTS", "STATUSES", "BootPlan", "SlotInfo", "SlotStore", "State", "TrialTerms", "other"]

log = logging.getLogger("edgeagent.state")

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
SLOT_FILE_MODE = 0o444  # a slot's model is never modified in place: it is replaced whole, or not at all


def current_boot_id() -> str | None:
    """The kernel's id of this system boot (new at every boot); None where there is none."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


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
        return anchor.read(self.anchor)

    def _update_anchor(self, st: State) -> None:
        anchor.update(self.anchor, st)

    def verify_slot(self, slot: str, st: State | None = None) -> bool:
        """The slot's model file (and labels) are there, read-only, and hash to what state.json says."""
        st = st or self.state()
        info = st.slots.get(slot) if st else None
        p = self.slot_path(slot)
        if info is None or not info.sha256 or not p.is_file():
            return False
        if sha256_file(p) != info.sha256:
            return False
        if info.labels is not None and labels.digest_beside(p) != info.labels:  # one unit: both verify, or neither
            log.error("slot %s: %s does not match its record", slot, labels.beside(p))
            return False
        mode = p.stat().st_mode
        if mode & 0o222:  # a serving model file is immutable; put right what an older version left
            log.warning("%s was writable (mode %o); made read-only", p, mode & 0o777)
            os.chmod(p, SLOT_FILE_MODE)
        return True

    def inactive_slot(self) -> str:
        return other(st.active) if (st := self.state()) else "b"

    # -- writing ----------------------------------------------------------------------------
    def _write(self, st: State) -> None:
        st.generation += 1
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.file.exists() and self._read_file(self.file) is not None:
            atomic_write_json(self.prev, json.loads(self.file.read_text()), mode=0o640)
        if st.boots is not None and not st.boots.get("boot_id"):
            st.boots["boot_id"] = current_boot_id()  # which system boot these starts belong to
        # the high-water mark never goes down, whatever this state says
        anchor_hw = self.read_anchor()["high_water"]
        for k, v in anchor_hw.items():
            if int(st.high_water.get(k, 0)) < v:
                st.high_water[k] = v
        atomic_write_json(self.file, st.to_json(), mode=0o640)
        self._update_anchor(st)

    def transition(self, change: Callable[[State], Any]) -> State:
        with self.lock:
            st = self.state()
            if st is None:
                raise StateError("state.no_model", f"{self.dir}: no state yet (the daemon seeds it on first start)")
            change(st)
            self._write(st)
            return st

    # -- boot -------------------------------------------------------------------------------
    def write_labels(self, slot: str, names: Sequence[str] | None) -> str | None:  # on a bad or empty slot
        return labels.write_beside(self.slot_path(slot), names, SLOT_FILE_MODE)

    def _seed(self, slot: str, initial: str, model_name: str, version: int,
              initial_labels: Sequence[str] | None = None) -> SlotInfo:
        if not initial:
            raise StateError("state.no_model", f"{self.dir}: no model installed; set model.initial to seed slot a",
                             exit_code=2)  # the configuration is at fault: systemd must not retry
        if not os.path.isfile(initial):
            raise StateError("state.no_model", f"model.initial {initial}: no such file", exit_code=2)
        self.slot_path(slot).parent.mkdir(parents=True, exist_ok=True)
        sha, size = copy_durable(initial, self.slot_path(slot), mode=SLOT_FILE_MODE)
        info = SlotInfo(model_name, version, sha, size, now_rfc3339(), "good")
        info.labels = self.write_labels(slot, initial_labels)
        return info

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
                st.slots[s].labels = labels.digest_beside(p)
                if not found:
                    st.active, found = s, True
            else:
                st.slots[s] = SlotInfo(model_name, None, sha, p.stat().st_size, now_rfc3339(), "bad",
                                       "unverified: state.json was lost and no record says this model was good")
        if not found and st.slots.get("a") is not None and st.slots.get("b") is None:
            st.active = "b"  # seed into the empty slot, keep the unverified file for inspection
        return st

    def _count_boot(self, st: State, max_crashes: int, events: list) -> None:
        alt = other(st.active)
        alt_ok = st.slots.get(alt) is not None and st.slots[alt].status == "good" and self.verify_slot(alt, st)
        # Brown-outs are not crashes: when the system booted again since the last start, the
        # previous run ended with the machine (a power cut), not with this model.
        last_boot = (st.boots or {}).get("boot_id")
        now_boot = current_boot_id()
        rebooted = bool(last_boot and now_boot and last_boot != now_boot)
        if rebooted:
            log.info("the system rebooted since the last start: that start does not count as a crash")
        event, stuck = rules.count_boot(st, max_crashes, alt_verifies=alt_ok, counts=not rebooted)
        if st.boots is not None:
            st.boots["boot_id"] = now_boot
        if event is not None:
            events.append(event)
        elif stuck:
            log.error("slot %s crashed %d times in a row and the other slot holds no good model to go back to",
                      st.active, max_crashes)

    def confirm_boot(self) -> None:
        """The active model served a whole crash window (or stopped cleanly): its starts so far
        were not crashes."""
        with self.lock:
            st = self.state()
            if st is None or st.trial or not st.boots or int(st.boots.get("count", 0)) == 0:
                return
            st.boots = {**st.boots, "count": 0}
            self._write(st)

    def _boot_write(self, st: State, events: list) -> bool:
        """Persist a boot decision; on a full or read-only disk, go on with it in memory (the
        daemon serves read-only and says so) rather than end the daemon. False when not written."""
        try:
            self._write(st)
            return True
        except OSError as e:
            if not any(ev.get("event") == "state.read_only" for ev in events):
                log.error("state cannot be written (%s): serving read-only", e.strerror or e)
                events.append({"event": "state.read_only", "reason": f"{e.strerror or e}"})
            return False

    def boot(self, *, model_name: str, initial: str, initial_version: int, max_attempts: int,
             max_crashes: int = 3, initial_labels: Sequence[str] | None = None) -> BootPlan:
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
                st.slots["a"] = self._seed("a", initial, model_name, initial_version, initial_labels)
                st.high_water[model_name] = initial_version
                events.append({"event": "state.seeded", "slot": "a", "version": initial_version})
                self._write(st)
            if st.trial:
                ev = rules.count_trial_start(st, max_attempts)
                if ev is not None:
                    events.append(ev)
            else:
                self._count_boot(st, max_crashes, events)
            if not self._boot_write(st, events) and st.trial:  # the attempt is counted before the model is loaded
                # read-only (a full disk): an attempt that cannot be counted must not be retried
                # forever; serve the model the trial came from, which is known good
                st.active, st.trial = st.trial["from"], None
                events.append({"event": "rollback", "reason": "state is read-only: the trial's attempt cannot be "
                                                              "counted; serving the model it came from",
                               "slot": st.active})
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
                    # seed the empty slot, keeping an unverified file for inspection
                    slot = alt if st.slots.get(cur) is not None and st.slots.get(alt) is None else cur
                    info = self._seed(slot, initial, model_name, initial_version, initial_labels) if initial else None
                    if info is None:
                        raise StateError("state.no_valid_model", f"{self.dir}: no slot holds a model that verifies")
                    if slot != cur and st.slots.get(cur) is not None and st.slots[cur].status != "bad":
                        # the slot left behind keeps its file for inspection, not its good label
                        st.slots[cur].status, st.slots[cur].reason = "bad", f"model file {why}"
                    st.slots[slot] = info
                    st.active, st.trial = slot, None
                    events.append({"event": "state.seeded", "slot": slot, "reason": f"slot {cur}: {why}"})
                self._boot_write(st, events)
            return BootPlan(st.active, self.slot_path(st.active), st.slots[st.active], st.trial, events)

    # -- install ----------------------------------------------------------------------------
    def prepare_target(self, slot: str) -> Path:
        """Mark the target slot bad("installing") BEFORE anything writes it; never the active one."""
        def change(st: State) -> None:
            if slot == st.active:
                raise StateError("state.slot_active", f"slot {slot} is active and cannot be written")
            if st.trial:
                raise StateError("state.trial_pending", "a model is on trial; commit or roll back first")
            rules.unstage(st, "replaced by a newer update")
            st.slots[slot] = SlotInfo(status="bad", reason="installing")

        self.transition(change)
        self.slot_path(slot).parent.mkdir(parents=True, exist_ok=True)
        return self.slot_path(slot)

    def record_installed(self, slot: str, *, model: str, version: int, sha256: str, size: int,
                         health: dict | None, labels_sha256: str | None = None) -> State:
        # Still "bad" until begin_trial switches to it: a crash here must keep the old slot serving.
        def change(st: State) -> None:
            st.slots[slot] = SlotInfo(model, version, sha256, size, now_rfc3339(), "bad",
                                      "installed, not switched to yet", health, labels_sha256)

        return self.transition(change)

    def begin_trial(self, slot: str, terms: TrialTerms) -> State:
        """One write: the slot becomes active on trial (rules.begin_trial)."""
        return self.transition(lambda st: rules.begin_trial(st, slot, terms))

    def commit(self) -> State:
        """The trial's model is good. Its manifest's `created` has now passed for sure: the time
        floor rises to it (only here, never for a manifest that was refused or rolled back)."""
        created: list[str] = []

        def change(st: State) -> None:
            if not st.trial:
                raise StateError("state.no_trial", "no model is on trial")
            info = st.slots[st.trial["slot"]]
            info.status, info.reason = "good", None
            if isinstance(st.trial.get("created"), str):
                created.append(st.trial["created"])
            st.trial = None

        st = self.transition(change)
        if created:
            try:
                TimeFloor(self.dir).committed(parse_utc(created[0]))
            except (OSError, ValueError) as e:  # bookkeeping: the commit itself is persisted
                log.warning("time floor not raised after the commit: %s", e)
        return st

    def rollback_target(self, st: State | None = None) -> str:
        """Where a rollback would go now (rules.rollback_target), its model's hash checked."""
        st = st or self.state()
        if st is None:
            raise StateError("state.no_model", f"{self.dir}: no state yet")
        to = rules.rollback_target(st)
        if not self.verify_slot(to, st):
            raise StateError("state.no_rollback_target", f"slot {to} holds no good model (does not verify)")
        return to

    def rollback(self, reason: str, *, mark_bad: bool) -> State:
        """Switch to the rollback target if its model verifies. A trial slot becomes bad with the reason."""
        def change(st: State) -> None:
            rules.apply_rollback(st, self.rollback_target(st), reason, mark_bad=mark_bad)

        return self.transition(change)

    def mark_bad(self, slot: str, reason: str) -> State:
        def change(st: State) -> None:
            if slot == st.active:
                raise StateError("state.slot_active", f"slot {slot} is active")
            info = st.slots[slot] = st.slots.get(slot) or SlotInfo()
            info.status, info.reason = "bad", reason
            st.staged = None if st.staged and st.staged["slot"] == slot else st.staged  # a bad slot is not staged

        return self.transition(change)

    def set_health(self, slot: str, health: dict) -> State:
        def change(st: State) -> None:
            info = st.slots.get(slot)
            if info is not None:
                info.health = health

        return self.transition(change)

    # -- views ------------------------------------------------------------------------------
    def reset(self, *, forget_versions: bool = False) -> dict:
        """Clear the slots, the trial and the staging area (`edgeagent reset`, the daemon stopped):
        the next start seeds model.initial. The anti-rollback high-water marks stay unless
        forget_versions: a reset is a way out of a bad state, not around the version rule."""
        import shutil

        with self.lock:
            st = self.state()
            hw = dict(self.read_anchor()["high_water"])
            for k, v in ((st.high_water if st else {}) or {}).items():
                hw[k] = max(int(v), int(hw.get(k, 0)))
            for d in ("slots", "staging"):
                shutil.rmtree(self.dir / d, ignore_errors=True)
            for f in (self.prev, self.dir / "rollout.json"):
                f.unlink(missing_ok=True)
            kept = {} if forget_versions else hw
            self.anchor.unlink(missing_ok=True)
            fresh = State(high_water=dict(kept))
            fresh.generation = (st.generation if st else 0)
            self.file.unlink(missing_ok=True)
            self._write(fresh)
            return {"high_water": kept, "forgot": hw if forget_versions else {}}

    def label_count(self, slot: str, info: SlotInfo | None) -> int | None:  # None: no labels recorded
        names = labels.load_beside(self.slot_path(slot)) if info is not None and info.labels else None
        return len(names) if names is not None else None

    def slots_table(self) -> dict:
        st = self.state() or State()
        rows = []
        for s in SLOTS:
            info = st.slots.get(s) or SlotInfo()
            rows.append({"slot": s, "role": "active" if s == st.active else "inactive", "status": info.status,
                         "model": info.model, "version": info.version, "sha256": info.sha256, "size": info.size,
                         "installed_at": info.installed_at, "health": info.health, "reason": info.reason,
                         "labels": self.label_count(s, info)})
        return {"active": st.active, "slots": rows, "trial": st.trial, "staged": st.staged, "high_water": st.high_water}
