"""The start: pick the slot to serve by the store's boot rules, load it; a broken one falls back."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Callable

from edgeagent.config import Config
from edgeagent.engine.model import Model, probe_delegate
from edgeagent.engine.spec import DelegateSpec
from edgeagent.errors import ConfigError, EdgeAgentError, ModelError, StateError
from edgeagent.events import EventBus
from edgeagent.service.host import ServingHost
from edgeagent.service.sdnotify import Notifier
from edgeagent.state import labels
from edgeagent.state.atomic import sha256_file
from edgeagent.state.model import BootPlan
from edgeagent.state.store import SlotStore
from edgeagent.state.timefloor import TimeFloor, released, utcnow
from edgeagent.update.cancel import Cancel

log = logging.getLogger("edgeagent")


RECOVERY = ("fix model.initial and run `edgeagent reset`, or install a good update offline with "
            "`edgeagent install`")


class _UntilStopped(Cancel):
    """A cancel that is set once the daemon is asked to stop (SIGTERM during the check)."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        super().__init__()
        self._stopping = stopping

    @property
    def is_set(self) -> bool:
        return self._stopping() or super().is_set

    def check(self) -> None:
        if self.is_set:
            raise EdgeAgentError("service.stopped", "stopped while model.initial was being checked", exit_code=0)


def initial_labels(cfg: Config) -> tuple[str, ...] | None:
    """model.labels, parsed: a label file that is not one stops the start (exit 2), like any bad key."""
    if not cfg.model.labels:
        return None
    try:
        return labels.read(cfg.model.labels)
    except labels.LabelsError as e:
        raise ConfigError("model.labels_invalid", f"model.labels {e}") from None


def check_initial(cfg: Config, store: SlotStore, stopping: Callable[[], bool] = lambda: False,
                  names: tuple[str, ...] | None = None) -> None:
    """model.initial seeds an empty state only, and only with a model this device can run: it is
    loaded and invoked once in the health child first, a fork of this process (a file that is no
    model, or one that crashes the interpreter, is a configuration error, exit 2, and nothing is
    written). Its labels must fit its output 0 when that is a classifier's."""
    m = cfg.model
    st = store.state()
    empty = st is not None and all(v is None for v in st.slots.values())  # after `edgeagent reset`
    first = st is None and not (store.file.exists() or store.prev.exists() or store.anchor.exists())
    if not (first or empty) or not m.initial or not os.path.isfile(m.initial):
        return  # not a first start, or the store's own one-line error (no model.initial)
    import tempfile  # first starts only, like the health child

    from edgeagent.update import health

    req = health.HealthRequest(candidate=str(m.initial), baseline=None, frames_file="", manifest_io=None,
                               max_latency_factor=cfg.update.max_latency_factor, max_latency_ms=None,
                               backend=m.backend, num_threads=m.num_threads, input_mean=m.input_mean,
                               input_std=m.input_std,
                               delegate=spec.to_dict() if (spec := DelegateSpec.of(m.delegate)) is not None else None)
    with tempfile.TemporaryDirectory(prefix="edgeagent-initial-") as work:
        res = health.check(req, [], timeout_s=cfg.update.health_timeout_s, workdir=Path(work), fork=True,
                           cancel=_UntilStopped(stopping))
    if not res.ok and res.code != "health.nonfinite":  # NaN on an all-zero frame says little
        raise ConfigError("model.initial_invalid", f"model.initial {m.initial}: {res.code}: {res.reason}; "
                                                   f"nothing was written")
    outs = (res.io or {}).get("outputs") or []
    why = labels.mismatch(names, outs[0]["shape"]) if names is not None and outs else None
    if why:
        raise ConfigError("model.labels_mismatch", f"model.labels {m.labels}: {why} of model.initial {m.initial}; "
                                                   f"nothing was written")


def note_initial(cfg: Config, store: SlotStore, plan: BootPlan) -> None:
    """A model.initial that differs from every slot's model is not served: say so once, and how."""
    m = cfg.model
    if not m.initial or not os.path.isfile(m.initial):
        return
    st = store.state()
    slots = [i for i in (st.slots.values() if st else []) if i is not None and i.sha256]
    size = os.path.getsize(m.initial)
    if any(i.size == size for i in slots) and sha256_file(m.initial) in {i.sha256 for i in slots}:
        return
    log.warning("model.initial %s is not the model serving (v%s from slot %s): it seeds an empty state only; "
                "to serve it, publish it as a signed update, or run `edgeagent reset` (keeps the anti-rollback "
                "versions) and start again", m.initial, plan.info.version, plan.slot)


def boot_model(cfg: Config, store: SlotStore, host: ServingHost, notifier: Notifier,
               events: EventBus, stopping: Callable[[], bool] = lambda: False) -> tuple[Model, BootPlan]:
    m = cfg.model
    # seeding copies and hashes model.initial, and the slots are hashed: ask systemd for time
    # in proportion to the model (10 MB/s, a slow SD card) before that work, not after
    paths = [m.initial] if m.initial else []
    paths += [store.slot_path(s) for s in ("a", "b")]
    size = max((os.path.getsize(p) for p in paths if os.path.isfile(p)), default=0)
    notifier.extend_timeout(60 + size / 10e6, "checking the model slots")
    names = initial_labels(cfg)
    spec = DelegateSpec.of(m.delegate)
    if spec is not None and spec.fallback == "fail":
        try:
            probe_delegate(spec, m.backend)
        except ModelError as e:  # the device or its library is missing: a restart cannot fix that
            raise EdgeAgentError(e.code, f"{e.message} (set [model.delegate] fallback = \"cpu\" to serve on the "
                                         f"CPU without it)", exit_code=2) from None
    check_initial(cfg, store, stopping, names)

    def plan_boot() -> BootPlan:
        return store.boot(model_name=m.name, initial=m.initial, initial_version=m.initial_version,
                          max_attempts=cfg.update.max_trial_attempts, max_crashes=cfg.update.max_crash_restarts,
                          initial_labels=names)

    plan = plan_boot()
    for ev in plan.events:
        ev = dict(ev)
        events.emit(ev.pop("event"), **ev)
    try:
        model = host.load_model(plan.path)
    except ModelError as e:
        log.error("slot %s model does not load: %s", plan.slot, e)
        try:
            store.rollback(f"load failed: {e.message}", mark_bad=True)
        except StateError as no_target:
            raise StateError("state.no_valid_model", f"slot {plan.slot}'s model does not load ({e.message}) and "
                                                     f"{no_target.message}: {RECOVERY}", exit_code=2) from None
        events.emit("rollback", reason=f"slot {plan.slot} does not load: {e.code}", slot=plan.slot)
        plan = plan_boot()
        model = host.load_model(plan.path)
    info = plan.info
    if model.delegate and model.delegate["state"] == "fallback":
        events.emit("model.delegate_fallback", delegate=model.delegate["name"], reason=model.delegate.get("reason"))
    note_initial(cfg, store, plan)
    host.set_model_info({"name": info.model, "version": info.version, "slot": plan.slot, "sha256": info.sha256,
                         "trial": plan.trial is not None, "labels": store.label_count(plan.slot, info)})
    events.emit("model.loaded", model=host.model_info, backend=model.backend)
    return model, plan


def observe_clock(cfg: Config) -> None:
    """Keep the persisted time floor (update expiry on devices without an RTC) near now."""
    try:
        seen = TimeFloor(cfg.state_dir).observe_wall_clock(
            released=released(), max_ahead=timedelta(days=cfg.update.clock_max_ahead_days))
        if seen == "behind":
            log.warning("the wall clock is below the last time this device saw: not synchronised yet "
                        "(update expiry is judged against the saved time floor)")
        elif seen == "ahead":
            log.warning("the wall clock reads %s, more than update.clock_max_ahead_days past anything this "
                        "device knows has passed: not saved as the time floor", utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"))
    except OSError as e:
        log.warning("could not save the time floor: %s", e)
