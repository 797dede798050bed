"""Model outputs from the inference thread to MQTT and local followers, with no network work on that thread.

`offer` runs on the inference thread: it copies the output arrays into a bounded queue and
returns; when the queue is full (the broker stopped reading, the link is slow) the newest is
dropped and counted, never waited for. A thread of its own builds each `P/output` summary (with
the top-k classes named by the serving model's labels) and hands it to the transport, whose
socket writes happen on its network thread, and to the control socket's followers
(`edgeagent output --follow`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from edgeagent.events import Sinks
from edgeagent.state import labels

log = logging.getLogger("edgeagent.mqtt")

QUEUE_LEN = 8


def top_k(o: np.ndarray, k: int, names: tuple[str, ...] | None) -> list[dict] | None:
    """The k highest scores of a classifier-shaped output, best first, each with its label when
    the model has one per class; None for any other output (boxes, feature maps)."""
    n = labels.classes(o.shape)
    if n is None or k <= 0:
        return None
    flat = o.reshape(-1)
    k = min(k, n)
    idx = np.argpartition(flat, n - k)[n - k:]
    idx = idx[np.argsort(-flat[idx], kind="stable")]
    named = names is not None and len(names) == n
    return [{"index": int(i), **({"label": names[i]} if named else {}), "score": round(float(flat[i]), 6)}
            for i in idx]


def summary(names: list[str], outs: list[np.ndarray], *, full: bool, k: int = 0,
            class_names: tuple[str, ...] | None = None) -> list[dict]:
    """The `outputs` list of a P/output message: per output its name, shape, argmax, max and
    mean, the top k of output 0 when it is a classifier's, and every value with output.publish = "full"."""
    items = []
    for i, (name, o) in enumerate(zip(names, outs)):
        flat = o.reshape(-1)
        item: dict[str, Any] = {"name": name, "shape": list(o.shape)}
        if flat.size:
            item.update(argmax=int(flat.argmax()), max=float(flat.max()), mean=float(flat.mean()))
            top = top_k(o, k, class_names) if i == 0 else None
            if top is not None:
                item["top"] = top
        if full:
            item["values"] = flat.tolist()
        items.append(item)
    return items


class OutputPublisher:
    def __init__(self, publish: Callable[[str, dict], None] | None, *, full: bool, version: Callable[[], Any],
                 top_k: int = 5) -> None:
        self._publish = publish  # (subtopic, payload) at QoS 0; never blocks; None: no broker
        self._full = full
        self._version = version
        self._k = top_k
        self._q: queue.Queue = queue.Queue(maxsize=QUEUE_LEN)
        self.dropped = 0  # summaries not sent because the queue was full
        self.latest: dict | None = None  # the last summary, for status and `top`
        self._sinks = Sinks()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, model: Any, outs: list[np.ndarray]) -> None:
        """The inference thread's side: copy and enqueue, or drop and count. The labels are the
        model object's own, so a summary can never name classes of the model it replaced."""
        try:
            self._q.put_nowait((time.time(), self._version(), [s.name for s in model.outputs],
                                getattr(model, "labels", None), [np.array(o, copy=True) for o in outs]))
        except queue.Full:
            self.dropped += 1

    def subscribe(self, sink: Callable[[dict], None]) -> Callable[[], None]:
        """`sink(summary)` for every summary from now on (a local follower); returns the unsubscribe."""
        return self._sinks.subscribe(sink)

    def brief(self) -> dict | None:
        """The last summary without its values (for status and `top`)."""
        msg = self.latest
        if msg is None:
            return None
        return {**msg, "outputs": [{k: v for k, v in o.items() if k != "values"} for o in msg["outputs"]]}

    def recent(self, n: int = 1) -> list[dict]:
        return [self.latest] if self.latest is not None and n > 0 else []

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
                ts, version, names, class_names, outs = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                msg = {"ts": round(ts, 3), "model": version,
                       "outputs": summary(names, outs, full=self._full, k=self._k, class_names=class_names)}
                self.latest = msg
                if self._publish is not None:
                    self._publish("output", msg)
                self._sinks.send(msg)
            except Exception:  # noqa: BLE001 - one bad output must not end the publisher
                log.exception("output not published")
