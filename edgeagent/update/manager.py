"""The live update orchestrator: install, switch, probation, commit or roll back.

It decides and persists; the pieces it drives are pure or single-purpose (the manifest verifier,
the fetcher, the patcher, the health child, the slot store, the probation judge). State is
written before the running loop is touched, so a crash at any instant leaves state.json naming
a model that verifies: begin_trial is persisted before the hot swap, a rollback is persisted
before the swap back. The previous model stays loaded through probation, so a rollback is one
reference assignment in the loop, not a reload.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from edgeagent.control.dispatcher import DEFERRED, Context, Dispatcher, require
from edgeagent.errors import CommandError, EdgeAgentError, ModelError, StateError, TransportError
from edgeagent.state.atomic import atomic_write_json
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.installer import Installed, Installer, PayloadSource
from edgeagent.runtime.loop import Shadow
from edgeagent.update.probation import Limits, judge, stall_limit_s
from edgeagent.update.transfer import TransferStore

log = logging.getLogger("edgeagent.update")

PROBATION_TICK_S = 0.1
TRANSFER_REREQUEST_S = 2.0
TRANSFER_STALL_S = 300.0
MAX_EARLY_CHUNKS = 4096


# How long a swap may wait for the loop to reach a frame boundary before the loop counts as stuck.
SWAP_WAIT_S = 10.0


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


class _Trial:
    def __init__(self, slot: str, previous: Any, limits: Limits, shadow: Shadow | None, before: dict) -> None:
        self.slot = slot
        self.previous = previous  # the model that served before; kept loaded until commit
        self.limits = limits
        self.shadow = shadow  # the previous model re-run on live frames (paired judgement)
        self.before = before  # {"invoke_p50_ms", "rss_mb"} of the previous model
        self.started = time.monotonic()

    def after(self, counters: dict) -> dict:
        """The new model's figures, measured the same way as `before`."""
        sh = self.shadow.summary() if self.shadow is not None else None
        p50 = sh["new_p50_ms"] if sh and sh["pairs"] else counters.get("invoke_p50_ms")
        return {"invoke_p50_ms": p50, "rss_mb": rss_mb()}


class UpdateManager:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.store = agent.store
        self.events = agent.events
        self._busy = threading.Lock()  # one update at a time
        self._switch = threading.RLock()  # swap/commit/rollback never interleave
        self._progress: dict | None = None
        self._trial: _Trial | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._chunks: dict[str, queue.Queue] = {}
        self._early: queue.Queue = queue.Queue(maxsize=MAX_EARLY_CHUNKS)

    @property
    def cfg(self):  # config.set can replace the agent's config
        return self.agent.config

    @property
    def _pending_file(self) -> Path:
        return self.cfg.state_dir / "staging" / "pending-update.json"

    # -- wiring -----------------------------------------------------------------------------
    def register(self, d: Dispatcher) -> None:
        d.register("update", self.op_update)
        d.register("rollback", self.op_rollback)
        d.register("commit", self.op_commit)
        d.register("slots", lambda args, ctx: self.store.slots_table())

    def resume(self, plan: Any) -> None:
        """After a (re)start: continue a pending trial's probation, and an unfinished update."""
        if plan.trial:
            t = plan.trial
            prev = None
            try:
                if self.store.verify_slot(t["from"]):
                    prev = self.agent.load_model(self.store.slot_path(t["from"]))
            except ModelError as e:
                log.warning("previous model (slot %s) does not load: %s", t["from"], e)
            before = t.get("before") or {"invoke_p50_ms": t.get("baseline_ms"), "rss_mb": None}
            self._start_probation(plan.slot, prev, self._limits(t, t.get("expected_ms")), before)
        try:
            pending = json.loads(self._pending_file.read_text())
        except (OSError, ValueError):
            return
        log.info("resuming the unfinished update to v%s", pending.get("version"))
        self._launch(pending["manifest"], PayloadSource.from_args(pending["source"]), None)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(3.0)

    def _spawn(self, target: Any, *args: Any, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    # -- status -----------------------------------------------------------------------------
    @property
    def on_trial(self) -> bool:
        return self._trial is not None

    def progress(self) -> dict | None:
        return dict(self._progress) if self._progress else None

    def trial_status(self) -> dict | None:
        st = self.store.state()
        if not st or not st.trial:
            return None
        out = dict(st.trial)
        tr = self._trial
        loop = self.agent.loop
        if tr is not None and loop is not None:
            c = loop.counters.to_dict()
            out.update(elapsed_s=round(time.monotonic() - tr.started, 1), inferences=c["frames"],
                       errors=c["errors"], nonfinite=c["nonfinite"], invoke_p50_ms=c["invoke_p50_ms"],
                       before=tr.before, stall_limit_s=tr.limits.stall_s,
                       shadow=tr.shadow.summary() if tr.shadow is not None else None)
        return out

    # -- update -----------------------------------------------------------------------------
    def op_update(self, args: dict, ctx: Context) -> Any:
        manifest = args.get("manifest")
        if isinstance(manifest, str):
            try:
                manifest = json.loads(manifest)
            except ValueError:
                raise UpdateRejected("update.malformed", "args.manifest: not JSON") from None
        if not isinstance(manifest, dict):
            raise CommandError("cmd.bad_args", "args.manifest: required, the signed envelope object")
        src = PayloadSource.from_args(args)
        if not self._launch(manifest, src, ctx):
            raise UpdateRejected("update.busy", "another update is in progress")
        return DEFERRED

    def _launch(self, manifest: dict, src: PayloadSource, ctx: Context | None) -> bool:
        if not self._busy.acquire(blocking=False):
            return False
        self._progress = {"phase": "check", "started_at": round(time.time(), 3)}
        self._spawn(self._run_update, manifest, src, ctx, name="update")
        return True

    def _run_update(self, manifest: dict, src: PayloadSource, ctx: Context | None) -> None:
        version = (manifest.get("signed") or {}).get("version") if isinstance(manifest.get("signed"), dict) else None
        try:
            if self._trial is not None:
                raise UpdateRejected("update.busy", "a model is on trial; commit or roll back first")
            inst = Installer(self.cfg, self.store, emit=self.events.emit, progress=self._set_progress,
                             wait_transfer=self._wait_transfer)
            m = inst.check(manifest)  # verified before anything is remembered or fetched
            version = m.version
            self._remember_pending(manifest, src, m.version)
            installed = inst.run(manifest, src, self._frames())
            self._switch_to(installed)
            result = {"version": m.version, "slot": installed.slot, "state": "trial",
                      "probation_s": self._trial.limits.probation_s if self._trial else None,
                      "health": installed.health}
            self._forget_pending()
            if ctx:
                ctx.reply(result)
        except EdgeAgentError as e:
            if not isinstance(e, TransportError):
                self._forget_pending()  # bad data: do not retry it at the next start
            self.events.emit("update.rejected", version=version, code=e.code, reason=e.message)
            if ctx:
                ctx.fail(e)
        except Exception as e:  # noqa: BLE001 - a bug must answer, not hang the caller
            log.exception("update failed")
            self._forget_pending()
            err = UpdateRejected("update.internal", f"{type(e).__name__}: {e}")
            self.events.emit("update.rejected", version=version, code=err.code, reason=err.message)
            if ctx:
                ctx.fail(err)
        finally:
            self._progress = None
            self._busy.release()

    def _set_progress(self, p: dict) -> None:
        self._progress = {**(self._progress or {}), **p}

    def _frames(self) -> list:
        loop = self.agent.loop
        return loop.recent_frames() if loop is not None else []

    def _remember_pending(self, manifest: dict, src: PayloadSource, version: int) -> None:
        if src.b64 is not None:
            return  # the command itself carries the payload; nothing to resume
        self._pending_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._pending_file, {"manifest": manifest, "source": src.to_args(), "version": version})

    def _forget_pending(self) -> None:
        try:
            self._pending_file.unlink()
        except FileNotFoundError:
            pass

    # -- chunked transfer over MQTT ---------------------------------------------------------
    def on_chunk(self, transfer_id: str, index: int, data: bytes) -> None:
        """Called on the transport's thread: enqueue only."""
        q = self._chunks.get(transfer_id)
        try:
            (q or self._early).put_nowait((transfer_id, index, data))
        except queue.Full:
            pass  # counted as missing and re-requested later

    def _wait_transfer(self, src: PayloadSource, m: Any) -> Path:
        tid = src.transfer_id
        store = TransferStore(self.cfg.state_dir / "staging")
        tr = store.begin(tid, src.chunks, m.payload.size, m.payload.sha256)
        q: queue.Queue = queue.Queue()
        self._chunks[tid] = q
        leftovers = []
        while True:  # chunks that came before the command
            try:
                item = self._early.get_nowait()
            except queue.Empty:
                break
            if item[0] == tid:
                q.put(item)
            else:
                leftovers.append(item)
        for item in leftovers:
            self.on_chunk(*item)
        try:
            last_progress = time.monotonic()
            last_request = 0.0
            last_pct = -1.0
            while not tr.complete:
                if self._stop.is_set():
                    raise TransportError("download.failed", "stopped while waiting for chunks")
                try:
                    _, idx, data = q.get(timeout=0.2)
                    tr.add(idx, data)
                    last_progress = time.monotonic()
                    pct = 100.0 * (src.chunks - len(tr.missing())) / src.chunks
                    if pct - last_pct >= 1.0 or tr.complete:
                        last_pct = pct
                        self._set_progress({"phase": "download", "percent": round(pct, 1)})
                        self.events.emit("update.downloading", version=m.version, percent=round(pct, 1), transfer=tid)
                except queue.Empty:
                    pass
                now = time.monotonic()
                if not tr.complete and now - max(last_progress, last_request) >= TRANSFER_REREQUEST_S:
                    last_request = now
                    missing = tr.missing()
                    self.events.emit("update.transfer", id=tid, missing=missing[:512], missing_count=len(missing),
                                     chunks=src.chunks)
                if now - last_progress > TRANSFER_STALL_S:
                    raise TransportError("download.failed", f"transfer {tid}: no chunk for {TRANSFER_STALL_S:.0f} s")
            return tr.assemble()
        finally:
            self._chunks.pop(tid, None)

    # -- switch, probation, commit, rollback ------------------------------------------------
    def _limits(self, overrides: dict | None = None, expected_ms: float | None = None) -> Limits:
        u = self.cfg.update
        o = overrides or {}
        loop = self.agent.loop
        period = 1.0 / loop.rate_hz if loop is not None and loop.rate_hz else 0.0
        return Limits(
            probation_s=float(o.get("probation_s") if o.get("probation_s") is not None else u.probation_s),
            min_inferences=int(o.get("min_inferences") if o.get("min_inferences") is not None else u.min_inferences),
            max_latency_factor=u.max_latency_factor,
            max_latency_ms=o.get("max_latency_ms"),
            min_agreement_pct=o.get("min_agreement_pct"),
            stall_s=stall_limit_s(max(period, (expected_ms or 0.0) / 1e3), self.agent.notifier.watchdog_s),
        )

    def _swap(self, model: Any, stall_s: float | None = None) -> Any:
        """Serve `model` from the next frame; the model it replaced, or None when the loop does not
        reach a frame boundary in time (stuck inside an interpreter). State is persisted before
        every swap, so the way out of a stuck loop is a restart: the daemon exits non-zero and
        systemd starts it again on what state.json names."""
        loop = self.agent.loop
        fut = loop.swap(model)
        deadline = time.monotonic() + SWAP_WAIT_S
        while time.monotonic() < deadline:
            try:
                return fut.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                if stall_s is not None and loop.model_stalled_s() > stall_s:
                    break  # known stuck: no point waiting out the deadline
        self.agent.request_restart(f"the inference loop is stuck inside the model for "
                                   f"{loop.model_stalled_s():.1f} s; restarting on the state just persisted")
        return None

    def _shadow_for(self, previous: Any, limits: Limits) -> Shadow | None:
        budget = self.cfg.update.shadow_budget_pct / 100.0
        if budget <= 0 and not limits.min_agreement_pct:
            return None
        return Shadow(previous, budget=budget or 0.05, compare=bool(limits.min_agreement_pct))

    def _switch_to(self, inst: Installed) -> None:
        loop = self.agent.loop
        self._set_progress({"phase": "switch"})
        before = {"invoke_p50_ms": loop.counters.to_dict()["invoke_p50_ms"], "rss_mb": rss_mb()}
        try:
            new = self.agent.load_model(inst.path)
            frames = loop.recent_frames()
            if frames:  # warm up off the loop's thread so the first served frame is not slow
                new.preprocess(frames[-1])
                new.invoke()
        except EdgeAgentError as e:
            self.store.mark_bad(inst.slot, f"load failed: {e.message}")
            raise UpdateRejected("update.health_failed", f"the new model does not load in the daemon: {e.message}") from None
        h = inst.manifest.health
        overrides = {"probation_s": h.probation_s, "min_inferences": h.min_inferences,
                     "max_latency_ms": h.max_latency_ms, "min_agreement_pct": h.min_agreement_pct} if h else {}
        expected_ms = inst.health.get("latency_ms")
        limits = self._limits(overrides, expected_ms)
        with self._switch:
            self.store.begin_trial(inst.slot, probation_s=limits.probation_s, min_inferences=limits.min_inferences,
                                   extra={"before": before, "max_latency_ms": limits.max_latency_ms,
                                          "min_agreement_pct": limits.min_agreement_pct, "expected_ms": expected_ms,
                                          "version": inst.manifest.version})
            shadow = self._shadow_for(loop.model, limits)
            loop.set_shadow(shadow)  # starts with the first frame the new model serves
            previous = self._swap(new)
            self._refresh_model_info()
        if previous is None:
            return  # restarting: the next start resumes the trial
        self.events.emit("update.trial", version=inst.manifest.version, slot=inst.slot,
                         probation_s=limits.probation_s, min_inferences=limits.min_inferences)
        self._start_probation(inst.slot, previous, limits, before, shadow)

    def _start_probation(self, slot: str, previous: Any, limits: Limits, before: dict,
                         shadow: Shadow | None = None) -> None:
        if shadow is None and previous is not None:  # resumed after a restart
            shadow = self._shadow_for(previous, limits)
            self.agent.loop.set_shadow(shadow)
        self._trial = _Trial(slot, previous, limits, shadow, before)
        self._spawn(self._probation, self._trial, name="probation")

    def _probation(self, trial: _Trial) -> None:
        loop = self.agent.loop
        while not self._stop.wait(PROBATION_TICK_S):
            if self._trial is not trial:
                return  # committed or rolled back by a command
            shadow = trial.shadow.summary() if trial.shadow is not None else None
            v = judge(loop.counters.to_dict(), shadow, trial.limits, time.monotonic() - trial.started,
                      loop.model_stalled_s())
            try:
                if v.decision == "commit":
                    self._commit(trial, v.reason)
                elif v.decision == "rollback":
                    self._rollback_trial(trial, f"{v.code}: {v.reason}", automatic=True)
                else:
                    continue
            except StateError as e:  # a command decided first (commit / rollback)
                log.info("probation verdict %s not applied: %s", v.decision, e)
            except EdgeAgentError as e:
                log.error("probation verdict %s failed: %s", v.decision, e)
            return

    def _commit(self, trial: _Trial, reason: str) -> dict:
        with self._switch:
            if self._trial is not trial:
                raise StateError("state.no_trial", "no model is on trial")
            st = self.store.commit()
            self._trial = None
            self.agent.loop.set_shadow(None)
            self._refresh_model_info()
        counters = self.agent.loop.counters.to_dict()
        if trial.previous is not None:
            trial.previous.close()
        info = st.slots[st.active]
        self.events.emit("update.committed", version=info.version, slot=st.active, reason=reason,
                         before=trial.before, after=trial.after(counters))
        return {"slot": st.active, "version": info.version, "status": "good"}

    def _rollback_trial(self, trial: _Trial, reason: str, *, automatic: bool) -> dict:
        loop = self.agent.loop
        with self._switch:
            if self._trial is not trial:
                raise StateError("state.no_trial", "no model is on trial")
            previous = trial.previous
            if previous is None:  # after a restart whose previous model did not load
                previous = self.agent.load_model(self.store.slot_path(self.store.state().trial["from"]))
            bad_version = self.store.state().slots[trial.slot].version
            after = trial.after(loop.counters.to_dict())
            st = self.store.rollback(reason, mark_bad=True)  # persisted before the swap back
            loop.set_shadow(None)
            failed = self._swap(previous, trial.limits.stall_s)
            self._trial = None
            self._refresh_model_info()
        if failed is not None and failed is not previous:
            failed.close()
        info = st.slots[st.active]
        self.events.emit("update.rolled_back", version=bad_version, to_version=info.version, slot=st.active,
                         reason=reason, automatic=automatic, before=trial.before, after=after,
                         restarting=failed is None)
        return {"slot": st.active, "version": info.version, "rolled_back": bad_version, "reason": reason,
                "restarting": failed is None}

    def _refresh_model_info(self) -> None:
        st = self.store.state()
        info = st.slots[st.active]
        self.agent.set_model_info({"name": info.model, "version": info.version, "slot": st.active,
                                   "sha256": info.sha256, "trial": bool(st.trial)})

    def op_commit(self, args: dict, ctx: Context) -> dict:
        trial = self._trial
        if trial is None:
            raise StateError("state.no_trial", "no model is on trial")
        return self._commit(trial, "committed by command")

    def op_rollback(self, args: dict, ctx: Context) -> dict:
        reason = require(args, "reason", str, optional=True, default="manual rollback")
        trial = self._trial
        if trial is not None:
            return self._rollback_trial(trial, reason, automatic=False)
        if self._busy.locked():
            raise UpdateRejected("update.busy", "an update is being installed; try again when it ends")
        loop = self.agent.loop
        with self._switch:
            st = self.store.state()
            other = "b" if st.active == "a" else "a"
            info = st.slots.get(other)
            if info is None or info.status != "good" or not self.store.verify_slot(other):
                why = "empty" if info is None else (info.status if info.status != "good" else "does not verify")
                raise StateError("state.no_rollback_target", f"slot {other} holds no good model ({why})")
            model = self.agent.load_model(self.store.slot_path(other))
            frames = loop.recent_frames()
            if frames:
                model.preprocess(frames[-1])
                model.invoke()
            frm = st.active
            st = self.store.rollback(reason, mark_bad=False)
            old = self._swap(model, self.agent.stall_limit_s())
            self._refresh_model_info()
        if old is not None:
            old.close()
        info = st.slots[st.active]
        self.events.emit("rollback", slot=st.active, version=info.version, **{"from": frm}, reason=reason)
        return {"slot": st.active, "version": info.version, "from": frm, "restarting": old is None}
