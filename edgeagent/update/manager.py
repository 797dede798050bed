"""The update commands and their one worker: update, commit, rollback, cancel, switch, slots.

The lifecycle of one update reads top to bottom in `_run_update`:
check (verify the manifest once) -> remember (resumable) -> plan, fetch, write and verify,
health (installer) -> switch, or stage until the switch window (staged) -> probation (trial) ->
commit or roll back (trial).
The manager decides and answers; the pieces it drives are pure or single-purpose: the manifest
verifier, the installer's steps, the payload sources, the switcher, the staged updates, the trial
keeper and the slot store (whose rules pick every rollback target).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from edgeagent.config import Config
from edgeagent.control.dispatcher import DEFERRED, Context, Dispatcher, Request, require
from edgeagent.errors import CommandError, EdgeAgentError, StateError, TransportError
from edgeagent.state import rules
from edgeagent.state.model import BootPlan
from edgeagent.state.store import SlotStore
from edgeagent.update.cancel import Cancel
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.pending import PendingUpdate
from edgeagent.update.ports import EventSink, ModelHost, Reply, ReplyRoutes
from edgeagent.update.probation import terms_for
from edgeagent.update.source import PayloadSource, TransferReceiver
from edgeagent.update.staged import StagedUpdates
from edgeagent.update.staging import Staging
from edgeagent.update.switch import Switcher
from edgeagent.update.trial import Trials

if TYPE_CHECKING:
    from edgeagent.update.installer import Installer

log = logging.getLogger("edgeagent.update")

CANCEL_WAIT_S = 15.0  # how long cancel / rollback wait for the update thread to stop
FINISHING_WAIT_S = 2.0  # how long a new request waits for an update in its check phase or tidying up


class UpdateManager:
    def __init__(self, host: ModelHost, store: SlotStore, events: EventSink, *, config: Callable[[], Config],
                 reply_routes: ReplyRoutes | None = None) -> None:
        self.host = host
        self.store = store
        self.events = events
        self._config = config  # config.set can replace the daemon's config
        self._reply_routes = reply_routes
        self._busy = threading.Lock()  # one update at a time
        self._progress: dict | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.receiver = TransferReceiver(config().update.max_chunk_buffer_bytes, stop=self._stop)
        self.switcher = Switcher(host, store, events)
        self.trials = Trials(host, store, events, self.switcher, update_config=lambda: self._config().update,
                             stop=self._stop, spawn=self._spawn)
        self.staged = StagedUpdates(store, events, self.switcher, self.trials, busy=self._busy,
                                    update_config=lambda: self._config().update, stop=self._stop, spawn=self._spawn)
        self.pending = PendingUpdate(config().state_dir)
        self._cancel: Cancel | None = None  # the running update's
        self._current: dict | None = None  # the running update: signed manifest, waiters
        self._done = threading.Event()
        self._done.set()
        self._waiters_lock = threading.Lock()
        self.bytes_total = 0  # payload bytes fetched by updates since start (telemetry update_bytes)

    @property
    def cfg(self) -> Config:
        return self._config()

    # -- wiring -----------------------------------------------------------------------------
    def register(self, d: Dispatcher) -> None:
        d.register("update", self.op_update)
        d.register("rollback", self.op_rollback)
        d.register("commit", lambda args, ctx: self.trials.commit())
        d.register("cancel", self.op_cancel)
        d.register("switch", lambda args, ctx: self.staged.switch_now())
        d.register("slots", lambda args, ctx: self.store.slots_table())

    def on_chunk(self, transfer_id: str, index: int, data: bytes) -> None:
        """The transport's thread: enqueue only."""
        self.receiver.on_chunk(transfer_id, index, data)

    def resume(self, plan: BootPlan) -> None:
        """After a (re)start: continue a pending trial's probation, and an unfinished update."""
        if plan.trial:
            self.trials.resume(plan.slot, plan.trial)
        self.staged.check_at_start()
        staging = Staging(self.cfg.state_dir)
        r = self.pending.load()
        if r is None:
            self._clean_staging(staging, set())  # what a killed daemon left (health frames, refused payloads)
            return
        self._clean_staging(staging, staging.names_for(r.payload_sha256, r.source.transfer_id)
                            if r.payload_sha256 else set())
        log.info("resuming the unfinished update to v%s", r.version)
        limit = self.cfg.update.download_deadline_s
        self._launch(r.manifest, r.source, self._resumed_context(r.request),
                     deadline=time.monotonic() + max(0.0, min(r.left_s, limit)) if r.left_s is not None else None)

    def _resumed_context(self, req: dict | None) -> Context | None:
        """The original request of a resumed update, so its answer reaches the requester."""
        if req is None or req.get("source") != "mqtt" or self._reply_routes is None:
            return None
        reply = self._reply_routes(req.get("route"))
        return Context(Request(req["id"], "update", {}), reply, "mqtt") if reply is not None else None

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
        return self.trials.on_trial

    @property
    def busy(self) -> bool:
        """An update is being installed or a model is on trial: a new update would be refused."""
        return self.trials.on_trial or self._progress is not None

    def progress(self) -> dict | None:
        return dict(self._progress) if self._progress else None

    def installing_version(self) -> Any:
        """The version of the update under way (None when there is none, or before its manifest is read)."""
        cur = self._current
        signed = cur.get("signed") if cur else None
        return signed.get("version") if isinstance(signed, dict) else None

    def trial_status(self) -> dict | None:
        return self.trials.status()

    def staged_status(self) -> dict | None:
        rec = self.staged.record()
        return self.staged.answer(rec) if rec else None

    # -- update -----------------------------------------------------------------------------
    def start_update(self, args: dict, reply: Reply, *, request_id: str, source: str = "mqtt") -> None:
        """The public way to start an update (the rollout follower's): as strict as a command
        from `source`; the outcome goes to `reply` as a command reply. Raises on refusal."""
        if self.op_update(args, Context(Request(request_id, "update", args), reply, source)) is not DEFERRED:
            raise UpdateRejected("update.internal", "the update did not start")

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
        self.receiver.expect(src.transfer_id)  # its chunks may come while the manifest is checked
        if deadline is None:
            deadline = time.monotonic() + self.cfg.update.download_deadline_s
        try:
            self._spawn(self._run_update, manifest, src, ctx, self._cancel, deadline, name="update")
        except RuntimeError as e:  # no thread to be had (a pids limit): leave nothing behind
            self._progress = self._current = self._cancel = None
            self.receiver.expect(None)
            self._busy.release()
            self._done.set()
            raise UpdateRejected("update.no_thread", f"the update could not start: {e}") from None
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
        inst: Installer | None = None
        try:
            if self.trials.on_trial:
                raise UpdateRejected("update.busy", "a model is on trial; commit or roll back first")
            from edgeagent.update.installer import Installer  # with the first update, not at start

            inst = Installer(self.cfg, self.store, emit=self.events.emit, progress=self._set_progress,
                             receiver=self.receiver, cancel=cancel, deadline=deadline,
                             rate=lambda: self._config().update.max_bytes_per_s)
            frames = self.host.loop.recent_frames()
            m = inst.check(manifest)  # verified first, and only here
            version = m.version
            done = self.staged.already(m)
            if done is not None:  # this very update is staged already (a retried push)
                self.pending.forget()
                self._answer(ok=done)
                return
            keep = staging.names_for(m.payload.sha256, src.transfer_id)
            self.pending.remember(manifest, src, m.version, _request_of(ctx), deadline)
            installed = inst.run(m, src, frames)
            cancel.check()
            expected = installed.health.get("latency_ms")
            terms_of = lambda before: terms_for(m, self.cfg.update, expected_ms=expected, before=before)  # noqa: E731
            at = self.staged.switch_time(m)
            if at is not None:  # download now, switch later: it waits in its slot
                rec = self.staged.stage(installed, terms_of(None), at)
                self.pending.forget()
                self._answer(ok={**self.staged.answer(rec), "health": installed.health})
                return
            self._set_progress({"phase": "switch"})
            self.trials.switch_to(installed.slot, installed.path, m.version, terms_of)
            probation = self.store.state().trial
            self.pending.forget()
            self._answer(ok={"version": m.version, "slot": installed.slot, "state": "trial",
                             "probation_s": probation.get("probation_s") if probation else None,
                             "health": installed.health})
        except EdgeAgentError as e:
            resumable = isinstance(e, TransportError) and e.code == "download.failed" and not cancel.is_set
            if not resumable:
                self.pending.forget()  # bad data, a cancel or a deadline: do not retry it at the next start
            self._clean_staging(staging, keep if resumable else set())
            if resumable and self._stop.is_set():
                log.info("update to v%s paused by the stop; the next start resumes it and answers the request", version)
                return
            self.events.emit("update.rejected", version=version, code=e.code, reason=e.message,
                             **({"bytes_fetched": inst.pace.bytes} if inst is not None and inst.pace.bytes else {}))
            self._answer(err=e)
        except OSError as e:  # the state or staging filesystem refused a write (full, read-only)
            log.error("update to v%s: %s", version, e)
            self.pending.forget()
            self._clean_staging(staging, set())
            err = UpdateRejected("update.no_space" if e.errno == errno.ENOSPC else "update.io_error",
                                 f"{e.strerror or e}: {getattr(e, 'filename', None) or ''}".rstrip(": "))
            self.events.emit("update.rejected", version=version, code=err.code, reason=err.message)
            self._answer(err=err)
        except Exception as e:  # noqa: BLE001 - a bug must answer, not hang the caller
            log.exception("update failed")
            self.pending.forget()
            self._clean_staging(staging, set())
            err = UpdateRejected("update.internal", f"{type(e).__name__}: {e}")
            self.events.emit("update.rejected", version=version, code=err.code, reason=err.message)
            self._answer(err=err)
        finally:
            self._progress = None
            if inst is not None:
                self.bytes_total += inst.pace.bytes  # every byte an update fetched, taken or not
            self._current = None
            self._cancel = None
            self.receiver.expect(None)
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

    def _set_progress(self, p: dict) -> None:
        self._progress = {**(self._progress or {}), **p}

    # -- cancel, rollback -------------------------------------------------------------------
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
                                                              if self.trials.on_trial else "")}
        if not self._cancel_running(reason):
            raise UpdateRejected("update.busy", f"the update did not stop within {CANCEL_WAIT_S:.0f} s")
        return {"cancelled": True, "phase": phase}

    def op_rollback(self, args: dict, ctx: Context) -> dict:
        reason = require(args, "reason", str, optional=True, default="manual rollback")
        noop = self._rollback_noop(args)
        if noop is not None:
            return noop
        self.trials.stop_watching()  # a model committed by command is rolled back as a committed one
        if self.trials.on_trial:
            return self.trials.rollback(reason)
        if self._busy.locked():
            # a download never blocks a rollback: the update is cancelled first (it may be
            # about to write the slot the rollback goes to)
            if not self._cancel_running(f"cancelled by rollback: {reason}"):
                raise UpdateRejected("update.busy", f"the update did not stop within {CANCEL_WAIT_S:.0f} s")
            if self.trials.on_trial:  # it had just switched: roll that trial back
                return self.trials.rollback(reason)
        return self.switcher.rollback_committed(reason)


    def _rollback_noop(self, args: dict) -> dict | None:
        """A conditional rollback ("leave": the model to leave, "to": the one to return to, each a
        version or a sha256) that has nothing to do answers so, instead of toggling."""
        leave = require(args, "leave", (int, str), optional=True)
        to = require(args, "to", (int, str), optional=True)
        if leave is None and to is None:
            return None
        st = self.store.state()
        why = rules.rollback_needed(st, leave=leave, to=to)
        if why is not None:
            info = st.slots[st.active]
            return {"slot": st.active, "version": info.version, "rolled_back": False, "note": why}
        if to is not None:
            target = self.store.rollback_target(st)
            if not rules.matches(st.slots[target], to):
                raise StateError("state.no_rollback_target", f"slot {target} holds v{st.slots[target].version}, not {to}")
        return None


def _request_of(ctx: Context | None) -> dict | None:
    """What a restart needs to answer the request: its id and where its reply goes."""
    if ctx is None:
        return None
    return {"id": ctx.request.id, "source": ctx.source,
            "route": getattr(getattr(ctx, "_reply", None), "route", None)}
