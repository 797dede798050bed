"""The start: pick the slot to serve by the store's boot rules, load it; a broken one falls back."""

from __future__ import annotations

import logging
import os

from edgeagent.config import Config
from edgeagent.engine.model import Model
from edgeagent.errors import ModelError
from edgeagent.events import EventBus
from edgeagent.service.host import ServingHost
from edgeagent.service.sdnotify import Notifier
from edgeagent.state.model import BootPlan
from edgeagent.state.store import SlotStore

log = logging.getLogger("edgeagent")


def boot_model(cfg: Config, store: SlotStore, host: ServingHost, notifier: Notifier,
               events: EventBus) -> tuple[Model, BootPlan]:
    m = cfg.model
    # seeding copies and hashes model.initial, and the slots are hashed: ask systemd for time
    # in proportion to the model (10 MB/s, a slow SD card) before that work, not after
    paths = [m.initial] if m.initial else []
    paths += [store.slot_path(s) for s in ("a", "b")]
    size = max((os.path.getsize(p) for p in paths if os.path.isfile(p)), default=0)
    notifier.extend_timeout(60 + size / 10e6, "checking the model slots")

    def plan_boot() -> BootPlan:
        return store.boot(model_name=m.name, initial=m.initial, initial_version=m.initial_version,
                          max_attempts=cfg.update.max_trial_attempts, max_crashes=cfg.update.max_crash_restarts)

    plan = plan_boot()
    for ev in plan.events:
        ev = dict(ev)
        events.emit(ev.pop("event"), **ev)
    try:
        model = host.load_model(plan.path)
    except ModelError as e:
        log.error("slot %s model does not load: %s", plan.slot, e)
        store.rollback(f"load failed: {e.message}", mark_bad=True)
        events.emit("rollback", reason=f"slot {plan.slot} does not load: {e.code}", slot=plan.slot)
        plan = plan_boot()
        model = host.load_model(plan.path)
    info = plan.info
    host.set_model_info({"name": info.model, "version": info.version, "slot": plan.slot, "sha256": info.sha256,
                         "trial": plan.trial is not None})
    events.emit("model.loaded", model=host.model_info, backend=model.backend)
    return model, plan
