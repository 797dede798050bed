"""Download now, switch later: a verified, health-checked update waits in its slot (status
`staged`) for the device's switch window and the manifest's signed `not_before`.

A camera on a production line takes the bytes whenever they come but changes its model only in
a maintenance window. The staged record lives in state.json, so it survives restarts; a watcher
thread switches it when it is due (through the same trial as any update: probation, commit or
rollback), a `switch` command switches it at once, and a newer update replaces it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from edgeagent.config import UpdateConfig
from edgeagent.errors import StateError
from edgeagent.state import rules, schedule
from edgeagent.state.model import now_rfc3339
from edgeagent.state.rules import TrialTerms
from edgeagent.state.store import SlotStore
from edgeagent.state.timefloor import parse_utc, utcnow
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.ports import EventSink
from edgeagent.update.switch import Switcher
from edgeagent.update.trial import Trials

if TYPE_CHECKING:  # annotations only: the installer and verifier load with the first update
    from edgeagent.update.installer import Installed
    from edgeagent.update.manifest import Manifest

log = logging.getLogger("edgeagent.update")

TICK_S = 1.0
SWITCH_WAIT_S = 2.0  # how long `switch` waits for an update thread that is finishing


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StagedUpdates:
    def __init__(self, store: SlotStore, events: EventSink, switcher: Switcher, trials: Trials, *,
                 busy: threading.Lock, update_config: Callable[[], UpdateConfig], stop: threading.Event,
                 spawn: Callable[..., None], clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.events = events
        self.switcher = switcher
        self.trials = trials
        self._busy = busy  # the update manager's: a switch and an install never run together
        self._ucfg = update_config  # read every tick: config.set can change update.switch_window
        self._stop = stop
        self._spawn = spawn
        self._clock = clock
        self._watching = threading.Lock()

    def record(self) -> dict | None:
        st = self.store.state()
        return st.staged if st else None

    # -- deciding -----------------------------------------------------------------------------
    def switch_time(self, m: Manifest) -> datetime | None:
        """When a just-installed update may switch: None for now, else the time it waits for."""
        nb = parse_utc(m.not_before) if m.not_before else None
        now = self._clock()
        at = schedule.next_switch(now, self._ucfg().switch_window, nb)
        return at if at > now else None

    def already(self, m: Manifest) -> dict | None:
        """The answer for a manifest whose update is the one staged (a retried push), None for
        another; an update older than the staged one is refused (a newer one replaces it)."""
        rec = self.record()
        if rec is None:
            return None
        if rec["version"] == m.version and rec.get("sha256") == m.target.sha256:
            return self.answer(rec)
        if m.version <= rec["version"]:
            raise UpdateRejected("update.replay" if m.version == rec["version"] else "update.downgrade",
                                 f"v{rec['version']} is staged; only a newer update replaces it")
        return None

    @staticmethod
    def answer(rec: dict) -> dict:
        return {"version": rec["version"], "slot": rec["slot"], "state": "staged", "switch_at": rec.get("switch_at"),
                "not_before": rec.get("not_before")}

    # -- staging ------------------------------------------------------------------------------
    def stage(self, inst: Installed, terms: TrialTerms, at: datetime) -> dict:
        """Persist the installed slot as staged and start watching for its time."""
        keep = {k: v for k, v in dataclasses.asdict(terms).items() if k != "before"}
        rec = {"version": inst.manifest.version, "sha256": inst.manifest.target.sha256,
               "not_before": inst.manifest.not_before, "switch_at": _iso(at), "staged_at": now_rfc3339(),
               "terms": keep}
        st = self.store.transition(lambda s: rules.stage(s, inst.slot, rec))
        self.switcher.refresh_model_info()
        self.events.emit("update.staged", version=inst.manifest.version, slot=inst.slot, switch_at=rec["switch_at"],
                         not_before=rec["not_before"], windows=list(self._ucfg().switch_window))
        self.watch()
        return st.staged

    def watch(self) -> None:
        """Start the watcher if an update is staged and none runs (after staging, and at start)."""
        if self.record() is None or not self._watching.acquire(blocking=False):
            return
        try:
            self._spawn(self._watch, name="staged")
        except RuntimeError as e:  # no thread: the update stays staged; a `switch` command still works
            self._watching.release()
            log.error("cannot watch the staged update's window (%s); `switch` switches it", e)

    def _watch(self) -> None:
        try:
            while not self._stop.wait(TICK_S):
                rec = self.record()
                if rec is None:
                    return
                nb = parse_utc(rec["not_before"]) if rec.get("not_before") else None
                now = self._clock()
                at = schedule.next_switch(now, self._ucfg().switch_window, nb)
                if at > now:
                    if _iso(at) != rec.get("switch_at"):  # the windows changed (config.set)
                        self.store.transition(lambda s: s.staged and s.staged.update(switch_at=_iso(at)))
                        self.switcher.refresh_model_info()
                    continue
                if not self._busy.acquire(blocking=False):
                    continue  # an update or a command is busy: the next tick
                try:
                    self._switch(rec, "its switch window")
                except Exception as e:  # noqa: BLE001 - logged and in events; the watcher ends with its update
                    log.error("the staged v%s did not switch: %s", rec["version"], getattr(e, "message", e))
                finally:
                    self._busy.release()
                return
        finally:
            self._watching.release()

    # -- switching ----------------------------------------------------------------------------
    def switch_now(self) -> dict:
        """The `switch` command: the staged update switches now, whatever the window."""
        if self.record() is None:
            raise StateError("state.nothing_staged", "no update is staged")
        # an update that has just answered "staged" may still be tidying up: wait for it a moment
        if self.trials.on_trial or not self._busy.acquire(timeout=SWITCH_WAIT_S):
            raise UpdateRejected("update.busy", "an update is in progress or a model is on trial")
        try:
            rec = self.record()
            if rec is None:
                raise StateError("state.nothing_staged", "no update is staged")
            return self._switch(rec, "the switch command")
        finally:
            self._busy.release()

    def _switch(self, rec: dict, why: str) -> dict:
        slot = rec["slot"]
        if not self.store.verify_slot(slot):
            self.store.transition(lambda s: rules.unstage(s, "staged model does not verify"))
            self.switcher.refresh_model_info()
            self.events.emit("update.rejected", version=rec["version"], code="update.staged_damaged",
                             reason=f"slot {slot} no longer holds the staged model")
            raise StateError("state.slot_damaged", f"slot {slot} no longer holds the staged v{rec['version']}")
        log.info("switching to the staged v%s (%s)", rec["version"], why)
        terms = rec["terms"]

        def terms_of(before: dict) -> TrialTerms:
            return TrialTerms(**{**terms, "before": before})

        try:
            self.trials.switch_to(slot, self.store.slot_path(slot), rec["version"], terms_of)
        except UpdateRejected as e:  # it did not load: switch_to marked its slot bad, which unstages it
            self.events.emit("update.rejected", version=rec["version"], code=e.code, reason=e.message)
            raise
        st = self.store.state()
        return {"version": rec["version"], "slot": slot, "state": "trial",
                "probation_s": st.trial.get("probation_s") if st and st.trial else None}

    def check_at_start(self) -> None:
        """After a (re)start: a staged slot that no longer verifies is forgotten; else watched."""
        rec = self.record()
        if rec is None:
            return
        if not self.store.verify_slot(rec["slot"]):
            log.error("the staged v%s in slot %s does not verify; forgotten", rec["version"], rec["slot"])
            self.store.transition(lambda s: rules.unstage(s, "staged model does not verify"))
            self.switcher.refresh_model_info()
            return
        log.info("v%s is staged in slot %s; it switches at %s", rec["version"], rec["slot"], rec.get("switch_at"))
        self.switcher.refresh_model_info()
        self.watch()

