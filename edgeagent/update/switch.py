"""Load, warm up and hot-swap models in the running loop, and get out when the loop is stuck.

State is persisted by the caller before every swap, so the way out of a stuck loop is a restart:
the daemon exits non-zero and systemd starts it again on what state.json names.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from typing import Any

from edgeagent.state import rules
from edgeagent.state.model import State
from edgeagent.state.store import SlotStore
from edgeagent.update.ports import EventSink, ModelHost

log = logging.getLogger("edgeagent.update")

# How long a swap may wait for the loop to reach a frame boundary before the loop counts as stuck.
SWAP_WAIT_S = 10.0


def rss_mb() -> float:
    import psutil  # with the first trial, not at the daemon's start

    return round(psutil.Process().memory_info().rss / 2**20, 1)


class Switcher:
    def __init__(self, host: ModelHost, store: SlotStore, events: EventSink) -> None:
        self.host = host
        self.store = store
        self.events = events
        self.lock = threading.RLock()  # swap, commit and rollback never interleave

    def figures(self) -> dict:
        """The serving model's figures, measured the way a trial's `before` and `after` are."""
        return {"invoke_p50_ms": self.host.loop.counters.to_dict()["invoke_p50_ms"], "rss_mb": rss_mb()}

    def load_warm(self, path: str | os.PathLike) -> Any:
        """Load a model and run it once on a recent real frame, off the loop's thread, so the first
        frame it serves is not slow. Raises ModelError."""
        model = self.host.load_model(path)
        frames = self.host.loop.recent_frames()
        if frames:
            model.preprocess(frames[-1])
            model.invoke()
        return model

    def swap(self, model: Any, stall_s: float | None = None) -> Any:
        """Serve `model` from the next frame; the model it replaced, or None when the loop does not
        reach a frame boundary in time (stuck inside an interpreter): then a restart is requested."""
        loop = self.host.loop
        fut = loop.swap(model)
        deadline = time.monotonic() + SWAP_WAIT_S
        while time.monotonic() < deadline:
            try:
                return fut.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                if stall_s is not None and loop.model_stalled_s() > stall_s:
                    break  # known stuck: no point waiting out the deadline
        self.host.request_restart(f"the inference loop is stuck inside the model for "
                                  f"{loop.model_stalled_s():.1f} s; restarting on the state just persisted")
        return None

    def refresh_model_info(self, st: State | None = None) -> None:
        """The served model's identity from state.json (or `st`, what is served in memory when
        state could not be written)."""
        st = st or self.store.state()
        info = st.slots[st.active]
        staged = {k: st.staged.get(k) for k in ("version", "switch_at", "not_before")} if st.staged else None
        self.host.set_model_info({"name": info.model, "version": info.version, "slot": st.active,
                                  "sha256": info.sha256, "trial": bool(st.trial),
                                  "labels": self.store.label_count(st.active, info), "staged": staged})

    def rollback_committed(self, reason: str) -> dict:
        """A manual rollback outside a trial: to the rollback target (state.rules), loaded and
        warmed before state changes, persisted before the swap."""
        with self.lock:
            to = self.store.rollback_target()
            model = self.load_warm(self.store.slot_path(to))
            before = self.store.state()
            frm = before.active
            from_version = before.slots[frm].version if before.slots.get(frm) else None
            try:
                st = self.store.rollback(reason, mark_bad=False)
                persisted = True
            except OSError as e:  # a full disk: roll back in memory all the same, and say so
                log.error("rollback not written (%s): swapping in memory; the next start serves slot %s again",
                          e.strerror or e, frm)
                st, persisted = before, False
                rules.apply_rollback(st, to, reason, mark_bad=False)  # the same decision, in memory
            old = self.swap(model, self.host.stall_limit_s())
            self.refresh_model_info(st)
        if old is not None:
            old.close()
        info = st.slots[st.active]
        self.events.emit("rollback", slot=st.active, version=info.version, **{"from": frm}, from_version=from_version,
                         reason=reason)
        return {"slot": st.active, "version": info.version, "from": frm, "from_version": from_version,
                "rolled_back": True, "restarting": old is None, **({} if persisted else {"persisted": False})}

