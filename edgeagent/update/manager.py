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
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from edgeagent.control.dispatcher import DEFERRED, Context, Dispatcher, Request, require
from edgeagent.errors import CommandError, EdgeAgentError, ModelError, StateError, TransportError
from edgeagent.runtime.loop import Shadow
from edgeagent.state.atomic import atomic_write_json
from edgeagent.update import transfer as transfer_mod
from edgeagent.update.cancel import Cancel
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.installer import Installed, Installer, PayloadSource
from edgeagent.update.probation import Limits, judge, stall_limit_s
from edgeagent.update.staging import Staging

log = logging.getLogger("edgeagent.update")

PROBATION_TICK_S = 0.1
TRANSFER_REREQUEST_S = 2.0
CANCEL_WAIT_S = 15.0  # how long cancel / rollback wait for the update thread to stop
FINISHING_WAIT_S = 2.0  # how long a new request waits for an update in its check phase or tidying up


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
        self._inbox = transfer_mod.ChunkInbox(agent.config.update.max_chunk_buffer_bytes)
        self._cancel: Cancel | None = None  # the running update's
        self._current: dict | None = None  # the running update: payload sha256, version, waiters
        self._done = threading.Event()
        self._done.set()
        self._waiters_lock = threading.Lock()

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
        d.register("cancel", self.op_cancel)
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
        staging = Staging(self.cfg.state_dir)
        try:
            pending = json.loads(self._pending_file.read_text())
        except FileNotFoundError:
            self._clean_staging(staging, set())  # what a killed daemon left (health frames, refused payloads)
            return
        except (OSError, ValueError, RecursionError) as e:
            log.error("%s unreadable (%s); removed", self._pending_file, e)
            self._forget_pending()
            self._clean_staging(staging, set())
            return
        try:
            if not isinstance(pending, dict) or not isinstance(pending.get("manifest"), dict) \
                    or not isinstance(pending.get("source"), dict):
                raise CommandError("cmd.bad_args", "expected {manifest, source}")
            src = PayloadSource.from_args(pending["source"])  # allowed when it was accepted
        except EdgeAgentError as e:
            log.error("%s is not a resumable update (%s); removed", self._pending_file, e.message)
            self._forget_pending()
            self._clean_staging(staging, set())
            return
        deadline_at = pending.get("deadline_at")
        left = (deadline_at - time.time()) if isinstance(deadline_at, (int, float)) else None
        payload = ((pending["manifest"].get("signed") or {}).get("payload") or {}) \
            if isinstance(pending["manifest"].get("signed"), dict) else {}
        sha = payload.get("sha256") if isinstance(payload, dict) and isinstance(payload.get("sha256"), str) else ""
        self._clean_staging(staging, staging.names_for(sha, src.transfer_id) if len(sha) == 64 and sha.isalnum() else set())
        log.info("resuming the unfinished update to v%s", pending.get("version"))
        ctx = self._resumed_context(pending.get("request"))
        self._launch(pending["manifest"], src, ctx,
                     deadline=time.monotonic() + max(0.0, min(left, self.cfg.update.download_deadline_s))
                     if left is not None else None)

    def _resumed_context(self, req: Any) -> Context | None:
        """The original request of a resumed update, so its answer reaches the requester."""
        if not isinstance(req, dict) or not isinstance(req.get("id"), str):
            return None
        reply = None
        transport = getattr(self.agent, "transport", None)
        if req.get("source") == "mqtt" and transport is not None:
            reply = transport.reply_to(req.get("route"))
        if reply is None:
            return None
        return Context(Request(req["id"], "update", {}), reply, "mqtt")

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

    def installing_version(self) -> Any:
        """The version of the update under way (None when there is none, or before its manifest is read)."""
        cur = self._current
        signed = cur.get("signed") if cur else None
        return signed.get("version") if isinstance(signed, dict) else None

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
            from edgeagent.update.manifest import load_untrusted

            manifest = load_untrusted(manifest)
        if not isinstance(manifest, dict):
            raise CommandError("cmd.bad_args", "args.manifest: required, the signed envelope object")
        allow_file = ctx.source != "mqtt" or self.cfg.update.allow_file_urls
        src = PayloadSource.from_args(args, allow_file=allow_file)
        if not self._launch(manifest, src, ctx):
            if self._join(manifest, ctx):
                return DEFERRED  # the same update is already under way: answer this request too
            # an update still checking its manifest (a refusal takes milliseconds) or already
            # answered and tidying up: wait for it rather than answer busy to the request after it
            cur, phase = self._current, (self._progress or {}).get("phase")
            if (cur is None or cur.get("answered") or phase == "check") and self._done.wait(FINISHING_WAIT_S) \
                    and self._launch(manifest, src, ctx):
                return DEFERRED
            raise UpdateRejected("update.busy", "another update is in progress")
        return DEFERRED

    def _join(self, manifest: dict, ctx: Context) -> bool:
        """A retried request for the update already running (a publisher that lost its
        connection and pushed again) waits for that update's outcome instead of update.busy."""
        cur = self._current
        signed = manifest.get("signed") if isinstance(manifest.get("signed"), dict) else {}
        payload = signed.get("payload") if isinstance(signed.get("payload"), dict) else {}
        with self._waiters_lock:
            if cur is None or cur.get("answered") or cur.get("signed") != signed or not payload.get("sha256"):
                return False
            cur["waiters"].append(ctx)
        return True

    def _launch(self, manifest: dict, src: PayloadSource, ctx: Context | None, deadline: float | None = None) -> bool:
        if not self._busy.acquire(blocking=False):
            return False
        self._progress = {"phase": "check", "started_at": round(time.time(), 3)}
        self._cancel = Cancel()
        self._current = {"signed": manifest.get("signed"), "waiters": [ctx] if ctx else []}
        self._done.clear()
        if src.transfer is not None:
            self._inbox.activate(src.transfer.id)  # its chunks may come while the manifest is checked
        if deadline is None:
            deadline = time.monotonic() + self.cfg.update.download_deadline_s
        self._spawn(self._run_update, manifest, src, ctx, self._cancel, deadline, name="update")
        return True

    def _answer(self, ok: Any = None, err: EdgeAgentError | None = None) -> None:
        cur = self._current or {}
        with self._waiters_lock:  # a request joining now would never be answered: it launches anew
            cur["answered"] = True
            waiters = list(cur.get("waiters", []))
        for w in waiters:
            if err is not None:
                w.fail(err)
            else:
                w.reply(ok)

    def _run_update(self, manifest: dict, src: PayloadSource, ctx: Context | None, cancel: Cancel,
                    deadline: float) -> None:
        signed = manifest.get("signed") if isinstance(manifest.get("signed"), dict) else {}
        version = signed.get("version")
        staging = Staging(self.cfg.state_dir)
        keep: set[str] = set()
        try:
            if self._trial is not None:
                raise UpdateRejected("update.busy", "a model is on trial; commit or roll back first")
            inst = Installer(self.cfg, self.store, emit=self.events.emit, progress=self._set_progress,
                             wait_transfer=lambda s, m: self._wait_transfer(s, m, cancel, deadline),
                             cancel=cancel, deadline=deadline)
            frames = self._frames()
            from edgeagent.update import health as health_mod

            m = inst.check(manifest, extra_bytes=health_mod.frames_file_bytes(frames))  # verified first
            version = m.version
            keep = staging.names_for(m.payload.sha256, src.transfer_id)
            self._remember_pending(manifest, src, m.version, ctx, deadline)
            installed = inst.run(manifest, src, frames)
            cancel.check()
            self._switch_to(installed)
            result = {"version": m.version, "slot": installed.slot, "state": "trial",
                      "probation_s": self._trial.limits.probation_s if self._trial else None,
                      "health": installed.health}
            self._forget_pending()
            self._answer(ok=result)
        except EdgeAgentError as e:
            resumable = isinstance(e, TransportError) and e.code == "download.failed" and not cancel.is_set
            if not resumable:
                self._forget_pending()  # bad data, a cancel or a deadline: do not retry it at the next start
            self._clean_staging(staging, keep if resumable else set())
            if resumable and self._stop.is_set():
                log.info("update to v%s paused by the stop; the next start resumes it and answers the request", version)
                return
            self.events.emit("update.rejected", version=version, code=e.code, reason=e.message)
            self._answer(err=e)
        except Exception as e:  # noqa: BLE001 - a bug must answer, not hang the caller
            log.exception("update failed")
            self._forget_pending()
            self._clean_staging(staging, set())
            err = UpdateRejected("update.internal", f"{type(e).__name__}: {e}")
            self.events.emit("update.rejected", version=version, code=err.code, reason=err.message)
            self._answer(err=err)
        finally:
            self._progress = None
            self._current = None
            self._cancel = None
            self._inbox.activate(None)
            self._busy.release()
            self._done.set()

    @staticmethod
    def _clean_staging(staging: Staging, keep: set[str]) -> None:
        try:
            n = staging.cleanup(keep)
            if n:
                log.info("staging: removed %d file(s) the update left", n)
        except OSError as e:
            log.warning("staging cleanup failed: %s", e)

    def _cancel_running(self, reason: str) -> bool:
        """Cancel the running update and wait for its thread to stop; True when none runs now."""
        c = self._cancel
        if c is not None:
            c.cancel(reason)
        return self._done.wait(CANCEL_WAIT_S)

    def op_cancel(self, args: dict, ctx: Context) -> dict:
        reason = require(args, "reason", str, optional=True, default="cancelled by command")
        phase = (self._progress or {}).get("phase")
        if self._cancel is None:
            return {"cancelled": False, "phase": None,
                    "note": "no update is being installed" + ("; a trial ends with commit or rollback"
                                                              if self._trial is not None else "")}
        if not self._cancel_running(reason):
            raise UpdateRejected("update.busy", f"the update did not stop within {CANCEL_WAIT_S:.0f} s")
        return {"cancelled": True, "phase": phase}

    def _set_progress(self, p: dict) -> None:
        self._progress = {**(self._progress or {}), **p}

    def _frames(self) -> list:
        loop = self.agent.loop
        return loop.recent_frames() if loop is not None else []

    def _remember_pending(self, manifest: dict, src: PayloadSource, version: int, ctx: Context | None,
                          deadline: float) -> None:
        """What a restart needs to finish this update and answer its request: the request id and
        where its reply goes, and the wall-clock deadline (a restart does not reset it)."""
        if src.b64 is not None:
            return  # the command itself carries the payload; nothing to resume
        request = None
        if ctx is not None:
            request = {"id": ctx.request.id, "source": ctx.source,
                       "route": getattr(getattr(ctx, "_reply", None), "route", None)}
        self._pending_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._pending_file, {"manifest": manifest, "source": src.to_args(), "version": version,
                                               "request": request,
                                               "deadline_at": round(time.time() + deadline - time.monotonic(), 3)},
                          mode=0o600)

    def _forget_pending(self) -> None:
        try:
            self._pending_file.unlink()
        except FileNotFoundError:
            pass

    # -- chunked transfer over MQTT ---------------------------------------------------------
    def on_chunk(self, transfer_id: str, index: int, data: bytes) -> None:
        """Called on the transport's thread: enqueue only, bounded in bytes (what does not fit is
        dropped and asked for again)."""
        self._inbox.put(transfer_id, index, data)

    def _wait_transfer(self, src: PayloadSource, m: Any, cancel: Cancel, deadline: float) -> Path:
        ann = src.transfer
        assert ann is not None
        ann.check(m.payload.size, self.cfg.mqtt.max_message_bytes)
        staging = Staging(self.cfg.state_dir)
        dest = staging.payload_path(m.payload.sha256)
        tr = transfer_mod.begin(staging.dir, ann, m.payload.size, m.payload.sha256)
        self._inbox.activate(ann.id)
        stall_s = self.cfg.update.download_stall_s
        try:
            last_progress = time.monotonic()
            last_request = 0.0
            last_pct = -1.0
            bad_seen = 0
            while not tr.complete:
                cancel.check()
                if self._stop.is_set():
                    raise TransportError("download.failed", "stopped while waiting for chunks")
                item = self._inbox.get(timeout=0.2)
                now = time.monotonic()
                if item is not None and tr.add(*item):
                    last_progress = now
                    p = tr.progress()
                    if p["percent"] - last_pct >= 1.0 or tr.complete:
                        last_pct = p["percent"]
                        self._set_progress(p)
                        self.events.emit("update.downloading", version=m.version, percent=p["percent"],
                                         bytes=p["bytes"], transfer=ann.id)
                if tr.bad > bad_seen:
                    log.warning("transfer %s: %d chunk(s) dropped (wrong index, size or sha256)", ann.id,
                                tr.bad - bad_seen)
                    bad_seen = tr.bad
                if not tr.complete and now - max(last_progress, last_request) >= TRANSFER_REREQUEST_S:
                    last_request = now
                    self.events.emit("update.transfer", id=ann.id, missing=tr.missing(512),
                                     missing_count=tr.missing_count, chunks=ann.chunks, bad_chunks=tr.bad)
                if now - last_progress > stall_s:
                    raise TransportError("download.failed", f"transfer {ann.id}: no chunk for {stall_s:.0f} s")
                if now > deadline:
                    raise TransportError("download.timeout", f"transfer {ann.id}: not complete by the download deadline")
            return tr.assemble(dest)
        finally:
            self._inbox.activate(None)
            tr.close()

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
            # a download never blocks a rollback: the update is cancelled first (it may be
            # about to write the slot the rollback goes to)
            if not self._cancel_running(f"cancelled by rollback: {reason}"):
                raise UpdateRejected("update.busy", f"the update did not stop within {CANCEL_WAIT_S:.0f} s")
            trial = self._trial
            if trial is not None:  # it had just switched: roll that trial back
                return self._rollback_trial(trial, reason, automatic=False)
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
