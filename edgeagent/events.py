"""The event bus: one place where state changes are announced.

Producers (the updater, the loop, the input sources) call ``emit``; sinks (the log, MQTT
``P/events``, control-socket subscribers, ``edgeagent top``) subscribe. Sinks must not block: the
MQTT sink only enqueues. A failing sink is logged and never breaks the producer.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("edgeagent.events")

Sink = Callable[[dict], None]


class Sinks:
    """Subscribers to a stream (events, output summaries): add, remove, and hand each item to all
    of them; a failing sink is logged and never breaks the producer."""

    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()

    def subscribe(self, sink: Sink) -> Callable[[], None]:
        """Add a sink; returns a function that removes it again."""
        with self._lock:
            self._sinks.append(sink)

        def unsubscribe() -> None:
            with self._lock:
                if sink in self._sinks:
                    self._sinks.remove(sink)

        return unsubscribe

    def send(self, item: dict) -> None:
        with self._lock:
            sinks = list(self._sinks)
        for sink in sinks:
            try:
                sink(item)
            except Exception:  # a broken sink must not break the producer
                log.exception("sink %r failed", sink)


class EventBus:
    def __init__(self, history: int = 50) -> None:
        self._sinks = Sinks()
        self._lock = threading.Lock()
        self._recent: collections.deque[dict] = collections.deque(maxlen=history)
        self._tag: tuple | None = None  # (version, fields): added to that version's update.* events

    def set_tag(self, version: object, fields: dict | None) -> None:
        """Tag the update events of one version (a rollout's id on the events of its update), so
        a subscriber to P/events can tell a rollout's update from a pushed one."""
        self._tag = (version, dict(fields)) if version is not None and fields else None

    def subscribe(self, sink: Sink) -> Callable[[], None]:
        """Add a sink; returns a function that removes it again."""
        return self._sinks.subscribe(sink)

    def emit(self, name: str, **fields: object) -> dict:
        tag = self._tag
        if tag is not None and name.startswith("update.") and fields.get("version") == tag[0]:
            fields = {**tag[1], **fields}
        event = {"event": name, "ts": round(time.time(), 3), **fields}
        detail = " ".join(f"{k}={v}" for k, v in fields.items() if k != "manifest")
        level = logging.WARNING if name in ("update.rejected", "update.rolled_back", "input.failed") else logging.INFO
        log.log(level, "event %s %s", name, detail)
        with self._lock:
            self._recent.append(event)
        self._sinks.send(event)
        return event

    def recent(self, n: int = 10) -> list[dict]:
        with self._lock:
            return list(self._recent)[-n:]
