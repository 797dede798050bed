"""What the updater needs of the rest of the daemon, as narrow typed interfaces.

The updater is given these and nothing else: it never holds the agent. The daemon's
`service.host.ServingHost` is the model host; `events.EventBus` is the event sink.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

Reply = Callable[[dict], None]


class EventSink(Protocol):
    def emit(self, name: str, **fields: Any) -> dict: ...


class ModelHost(Protocol):
    """The serving side: the running inference loop and how to load, announce and escape it."""

    @property
    def loop(self) -> Any: ...  # the running runtime.loop.InferenceLoop

    @property
    def watchdog_s(self) -> float | None: ...

    def load_model(self, path: str | os.PathLike) -> Any: ...

    def set_model_info(self, info: dict) -> None: ...

    def request_restart(self, reason: str) -> None: ...

    def stall_limit_s(self) -> float: ...


class ReplyRoutes(Protocol):
    """Turns a remembered reply route back into a reply function (None: that route is gone)."""

    def __call__(self, route: dict | None) -> Reply | None: ...
