"""The serving side of the daemon as the updater sees it: the running loop, the model loader,
the served model's identity, and the way out of a stuck interpreter.

It implements `update.ports.ModelHost`. The agent builds it and wires its two outlets
(`on_model_info`, `on_restart`); nothing here calls back into the agent.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from edgeagent.config import Config
from edgeagent.engine.model import Model
from edgeagent.state import labels, reference
from edgeagent.runtime.loop import InferenceLoop

log = logging.getLogger("edgeagent")


class ServingHost:
    def __init__(self, config: Callable[[], Config], *, watchdog_s: float | None,
                 on_restart: Callable[[str], None]) -> None:
        self._config = config  # config.set can replace the daemon's config
        self._watchdog_s = watchdog_s
        self._on_restart = on_restart
        self._listeners: list[Callable[[dict], None]] = []
        self.loop: InferenceLoop | None = None
        self.model_info: dict = {}
        self.restart_reason: str | None = None

    @property
    def watchdog_s(self) -> float | None:
        return self._watchdog_s

    def load_model(self, path: str | os.PathLike) -> Model:
        """A slot's model with the labels stored beside it: the two travel as one object, so a swap
        or a rollback can never pair a model with another's labels."""
        m = self._config().model
        model = Model.load(str(path), backend=m.backend, num_threads=m.num_threads, delegate=m.delegate,
                           input_mean=m.input_mean, input_std=m.input_std)
        model.labels = labels.load_beside(path)
        model.reference = reference.load_beside(path)  # the quality reference, signed or learned
        return model

    def on_model_info(self, listener: Callable[[dict], None]) -> None:
        """`listener(info)` whenever the served model changes (the transport's birth message)."""
        self._listeners.append(listener)

    def set_model_info(self, info: dict) -> None:
        """Called whenever the served model changes (start, swap, rollback)."""
        self.model_info = info
        for fn in list(self._listeners):
            try:
                fn(info)
            except Exception:  # noqa: BLE001 - an outlet must not break a swap
                log.exception("model info listener failed")

    def request_restart(self, reason: str) -> None:
        """Leave through systemd: the inference thread is stuck in native code that cannot be
        interrupted. Whatever must survive has been persisted by the caller."""
        if self.restart_reason is None:
            self.restart_reason = reason
            log.error("restarting: %s", reason)
            self._on_restart(reason)

    def stall_limit_s(self) -> float:
        """How long the served model may hold the loop in one call before it counts as hung."""
        from edgeagent.update.probation import stall_limit_s  # the judge, needed once the model serves

        assert self.loop is not None
        p50 = self.loop.counters.to_dict()["invoke_p50_ms"] or 0.0
        frame_s = max(1.0 / self.loop.rate_hz if self.loop.rate_hz else 0.0, p50 / 1e3)
        return stall_limit_s(frame_s, self._watchdog_s)
