"""Model outputs from the inference thread to MQTT, with no network work on that thread.

`offer` runs on the inference thread: it copies the output arrays into a bounded queue and
returns; when the queue is full (the broker stopped reading, the link is slow) the newest is
dropped and counted, never waited for. A thread of its own builds each `P/output` summary and
hands it to the transport, whose socket writes happen on its network thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

log = logging.getLogger("edgeagent.mqtt")

QUEUE_LEN = 8


def summary(names: list[str], outs: list[np.ndarray], *, full: bool) -> list[dict]:
    """The `outputs` list of a P/output message: per output its name, shape, argmax, max and
    mean, and every value with output.publish = "full"."""
    items = []
    for name, o in zip(names, outs):
        flat = o.reshape(-1)
        item: dict[str, Any] = {"name": name, "shape": list(o.shape)}
        if flat.size:
            item.update(argmax=int(flat.argmax()), max=float(flat.max()), mean=float(flat.mean()))
        if full:
            item["values"] = flat.tolist()
        items.append(item)
    return items


class OutputPublisher:
    def __init__(self, publish: Callable[[str, dict], None], *, full: bool, version: Callable[[], Any]) -> None:
        self._publish = publish  # (subtopic, payload) at QoS 0; never blocks
        self._full = full
        self._version = version
        self._q: queue.Queue = queue.Queue(maxsize=QUEUE_LEN)
        self.dropped = 0  # summaries not sent because the queue was full
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, model: Any, outs: list[np.ndarray]) -> None:
        """The inference thread's side: copy and enqueue, or drop and count."""
        try:
            self._q.put_nowait((time.time(), self._version(), [s.name for s in model.outputs],
                                [np.array(o, copy=True) for o in outs]))
        except queue.Full:
            self.dropped += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outputs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ts, version, names, outs = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._publish("output", {"ts": round(ts, 3), "model": version,
                                         "outputs": summary(names, outs, full=self._full)})
            except Exception:  # noqa: BLE001 - one bad output must not end the publisher
                log.exception("output not published")
