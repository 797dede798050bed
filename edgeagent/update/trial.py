"""A model on trial: the probation thread, its limits, and the commit or the rollback.

The previous model stays loaded through probation, so a rollback is one reference assignment in
the loop, not a reload. State is written before the loop is touched: begin_trial is persisted
before the hot swap, a rollback before the swap back, so a crash at any instant leaves
state.json naming a model that verifies.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from edgeagent.config import UpdateConfig
from edgeagent.errors import EdgeAgentError, ModelError, StateError
from edgeagent.runtime.loop import Shadow
from edgeagent.state import rules
from edgeagent.state.rules import TrialTerms, before_of
from edgeagent.state.store import SlotStore
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.ports import EventSink, ModelHost
from edgeagent.update.probation import Limits, judge, limits_for, stall_limit_s
from edgeagent.update.switch import Switcher, rss_mb

log = logging.getLogger("edgeagent.update")

PROBATION_TICK_S = 0.1
COMMIT_RETRY_S = 5.0  # a commit the disk refused is tried again this often


class _Trial:
    def __init__(self, slot: str, previous: Any, limits: Limits, shadow: Shadow | None, before: dict) -> None:
        self.slot = slot
        self.previous = previous  # the model that served before; kept loaded until commit
        self.limits = limits
        self.shadow = shadow  # the previous model re-run on live frames (paired judgement)
        self.before = before  # {"invoke_p50_ms", "rss_mb"} of the previous model
        self.started = time.monotonic()
        self.committed = False  # committed by command: watched until its probation would have ended

    def after(self, counters: dict) -> dict:
        """The new model's figures, measured the same way as `before`."""
        sh = self.shadow.summary() if self.shadow is not None else None
        p50 = sh["new_p50_ms"] if sh and sh["pairs"] else counters.get("invoke_p50_ms")
        return {"invoke_p50_ms": p50, "rss_mb": rss_mb()}


class Trials:
    def __init__(self, host: ModelHost, store: SlotStore, events: EventSink, switcher: Switcher, *,
                 update_config: Callable[[], UpdateConfig], stop: threading.Event,
                 spawn: Callable[..., None]) -> None:
        self.host = host
        self.store = store
        self.events = events
        self.switcher = switcher
        self._ucfg = update_config  # config.set can replace the daemon's config
        self._stop = stop
        self._spawn = spawn
        self._trial: _Trial | None = None

    @property
    def on_trial(self) -> bool:
        """On trial, or committed by command and still watched (a new update waits for either)."""
        return self._trial is not None

    def stop_watching(self) -> None:
        """A command acts on the committed model (a manual rollback): the watch ends first."""
        t = self._trial
        if t is not None and t.committed:
            self._end_watch(t)

    def status(self) -> dict | None:
        st = self.store.state()
        if not st or not st.trial:
            return None
        out = dict(st.trial)
        tr = self._trial
        loop = self.host.loop
        if tr is not None and loop is not None:
            c = loop.counters.to_dict()
            out.update(elapsed_s=round(time.monotonic() - tr.started, 1), inferences=c["frames"],
                       errors=c["errors"], nonfinite=c["nonfinite"], checked=c["checked"],
                       invoke_p50_ms=c["invoke_p50_ms"],
                       before=tr.before, stall_limit_s=tr.limits.stall_s,
                       shadow=tr.shadow.summary() if tr.shadow is not None else None)
        return out

    def _stall_s(self, expected_ms: float | None) -> float:
        loop = self.host.loop
        period = 1.0 / loop.rate_hz if loop is not None and loop.rate_hz else 0.0
        return stall_limit_s(max(period, (expected_ms or 0.0) / 1e3), self.host.watchdog_s)

    @staticmethod
    def _exclusive(model: Any) -> bool:
        """Served on an exclusive accelerator (a Coral): interleaving two models there evicts each
        other's parameters from its cache, so paired timings would measure the eviction."""
        d = getattr(model, "delegate", None)
        return bool(d and d.get("exclusive") and d.get("state") == "active")

    def _shadow_for(self, previous: Any, limits: Limits) -> Shadow | None:
        if self._exclusive(previous):
            return None
        budget = self._ucfg().shadow_budget_pct / 100.0
        if budget <= 0 and not limits.min_agreement_pct:
            return None
        return Shadow(previous, budget=budget or 0.05, compare=bool(limits.min_agreement_pct))

    # -- begin --------------------------------------------------------------------------------
    def switch_to(self, slot: str, path: Any, version: int, terms_of: Callable[[dict], TrialTerms]) -> None:
        """Load the installed model, persist the trial, swap it in and start probation.
        terms_of(before): the trial's terms given the serving model's figures, measured now."""
        loop = self.host.loop
        before = self.switcher.figures()
        try:
            new = self.switcher.load_warm(path)
        except EdgeAgentError as e:
            self.store.mark_bad(slot, f"load failed: {e.message}")
            raise UpdateRejected("update.health_failed", f"the new model does not load in the daemon: {e.message}") from None
        terms = terms_of(before)
        limits = limits_for(terms, self._ucfg(), self._stall_s(terms.expected_ms))
        with self.switcher.lock:
            self.store.begin_trial(slot, terms)
            shadow = self._shadow_for(loop.model, limits)
            loop.set_trial(True, shadow)  # starts with the first frame the new model serves
            previous = self.switcher.swap(new)
            self.switcher.refresh_model_info()
        if previous is None:
            return  # restarting: the next start resumes the trial
        self.events.emit("update.trial", version=version, slot=slot,
                         probation_s=limits.probation_s, min_inferences=limits.min_inferences)
        self._start(slot, previous, limits, before, shadow)

    def resume(self, slot: str, record: dict) -> None:
        """After a restart during a trial: the previous model loaded again, probation afresh."""
        prev = None
        try:
            if self.store.verify_slot(record["from"]):
                prev = self.host.load_model(self.store.slot_path(record["from"]))
        except ModelError as e:
            log.warning("previous model (slot %s) does not load: %s", record["from"], e)
        limits = limits_for(record, self._ucfg(), self._stall_s(record.get("expected_ms")))
        self._start(slot, prev, limits, before_of(record))

    def _start(self, slot: str, previous: Any, limits: Limits, before: dict, shadow: Shadow | None = None) -> None:
        if shadow is None and previous is not None:  # resumed after a restart
            shadow = self._shadow_for(previous, limits)
        self.host.loop.set_trial(True, shadow)  # again after a switch_to: the same shadow
        if shadow is None and self._exclusive(previous) and (before or {}).get("invoke_p50_ms"):
            limits = dataclasses.replace(limits, baseline_ms=before["invoke_p50_ms"])
        self._trial = _Trial(slot, previous, limits, shadow, before)
        try:
            self._spawn(self._probation, self._trial, name="probation")
        except RuntimeError as e:  # nothing would judge this model: it does not stay on trial unjudged
            log.error("probation could not start (%s); rolling the trial back", e)
            self._rollback(self._trial, f"probation.no_thread: {e}", automatic=True)

    # -- probation ----------------------------------------------------------------------------
    def _probation(self, trial: _Trial) -> None:
        loop = self.host.loop
        while not self._stop.wait(PROBATION_TICK_S):
            if self._trial is not trial:
                return  # committed or rolled back by a command
            shadow = trial.shadow.summary() if trial.shadow is not None else None
            v = judge(loop.counters.to_dict(), shadow, trial.limits, time.monotonic() - trial.started,
                      loop.model_stalled_s())
            try:
                if v.decision == "commit" and trial.committed:
                    self._end_watch(trial)
                elif v.decision == "commit":
                    self._commit(trial, v.reason)
                elif v.decision == "rollback":
                    self._rollback(trial, f"{v.code}: {v.reason}", automatic=True)
                else:
                    continue
            except StateError as e:  # a command decided first (commit / rollback)
                log.info("probation verdict %s not applied: %s", v.decision, e)
            except OSError as e:  # the commit could not be written (a full disk): stay on trial, try again
                log.error("probation verdict %s not written (%s); trying again", v.decision, e.strerror or e)
                if self._stop.wait(COMMIT_RETRY_S):
                    return
                continue
            except Exception as e:  # noqa: BLE001 - the judge's thread must end with a decision logged
                log.exception("probation verdict %s failed: %s", v.decision, e)
            return

    # -- end ----------------------------------------------------------------------------------
    def commit(self, reason: str = "committed by command") -> dict:
        """Commit now, as the operator asks; the judge keeps watching until the probation would
        have ended, and rolls the model back if it fails there (a commit is not a way to skip the
        checks: a model that turns NaN after the button is pressed still goes)."""
        trial = self._trial
        if trial is None or trial.committed:
            raise StateError("state.no_trial", "no model is on trial" if trial is None else
                             "already committed; watched until its probation would have ended")
        try:
            return self._commit(trial, reason, watch=True)
        except OSError as e:
            raise StateError("state.write_failed", f"the commit could not be written ({e.strerror or e}); "
                                                   "the model stays on trial") from None

    def rollback(self, reason: str, *, automatic: bool = False) -> dict:
        trial = self._trial
        if trial is None:
            raise StateError("state.no_trial", "no model is on trial")
        return self._rollback(trial, reason, automatic=automatic)

    def _commit(self, trial: _Trial, reason: str, *, watch: bool = False) -> dict:
        with self.switcher.lock:
            if self._trial is not trial or trial.committed:
                raise StateError("state.no_trial", "no model is on trial")
            st = self.store.commit()  # OSError (a full disk): still on trial, nothing changed
            counters = self.host.loop.counters.to_dict()
            watching = watch and (time.monotonic() - trial.started < trial.limits.probation_s
                                  or counters["frames"] < trial.limits.min_inferences)
            if watching:
                trial.committed = True  # the previous model stays loaded, the judge goes on
            else:
                self._trial = None
                self.host.loop.set_trial(False)
            self.switcher.refresh_model_info()
        if not watching and trial.previous is not None:
            trial.previous.close()
        info = st.slots[st.active]
        self.events.emit("update.committed", version=info.version, slot=st.active, reason=reason,
                         before=trial.before, after=trial.after(counters),
                         **({"watched_s": round(trial.limits.probation_s - (time.monotonic() - trial.started), 1)}
                            if watching else {}))
        return {"slot": st.active, "version": info.version, "status": "good",
                **({"watched": True} if watching else {})}

    def _end_watch(self, trial: _Trial) -> None:
        """A model committed by command passed what its probation would have judged."""
        with self.switcher.lock:
            if self._trial is not trial:
                return
            self._trial = None
            self.host.loop.set_trial(False)
        if trial.previous is not None:
            trial.previous.close()
        log.info("v%s: the probation it was committed ahead of has passed", self.host.model_info.get("version"))

    def _rollback(self, trial: _Trial, reason: str, *, automatic: bool) -> dict:
        loop = self.host.loop
        with self.switcher.lock:
            if self._trial is not trial:
                raise StateError("state.no_trial", "no model is on trial")
            previous = trial.previous
            if previous is None:  # after a restart whose previous model did not load
                previous = self.host.load_model(self.store.slot_path(self.store.rollback_target()))
            st = self.store.state()
            bad_version = st.slots[trial.slot].version
            after = trial.after(loop.counters.to_dict())
            persisted = True
            if trial.committed:
                reason = f"{reason} (after a commit by command)"
            mark_bad = automatic or not trial.committed
            try:
                st = self.store.rollback(reason, mark_bad=mark_bad)  # persisted before the swap back
            except OSError as e:
                # a full disk: the model is taken off the loop all the same (the same decision, in
                # memory); state.json still says trial, and the next start counts that as a failed
                # attempt and rolls it back
                persisted = False
                log.error("rollback of v%s not written (%s): swapping back in memory", bad_version, e.strerror or e)
                rules.apply_rollback(st, rules.rollback_target(st), reason, mark_bad=mark_bad)
            loop.set_trial(False)
            failed = self.switcher.swap(previous, trial.limits.stall_s)
            self._trial = None
            self.switcher.refresh_model_info(st)
        if failed is not None and failed is not previous:
            failed.close()
        info = st.slots[st.active]
        self.events.emit("update.rolled_back", version=bad_version, to_version=info.version, slot=st.active,
                         reason=reason, automatic=automatic, before=trial.before, after=after,
                         restarting=failed is None, **({} if persisted else {"persisted": False}),
                         **({"after_commit": True} if trial.committed else {}))
        return {"slot": st.active, "version": info.version, "rolled_back": bad_version, "reason": reason,
                "restarting": failed is None, **({} if persisted else {"persisted": False})}
