"""Telemetry on a thread of its own: the P/telemetry sample, the Prometheus textfile and
histogram, Home Assistant's update state, systemd's STATUS= line and the figures log line.

Off the main thread on purpose: a slow reader (vcgencmd waits up to 2 s), a slow disk or a
broker that stopped reading never delays the watchdog ping there.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from edgeagent.config import Config
from edgeagent.service.host import ServingHost
from edgeagent.service.sdnotify import Notifier
from edgeagent.telemetry.figures import figures_line

if TYPE_CHECKING:
    from edgeagent.telemetry.collector import TelemetryCollector

log = logging.getLogger("edgeagent")


class Reporter:
    def __init__(self, *, config: Callable[[], Config], collector: Callable[[], TelemetryCollector],
                 host: ServingHost, notifier: Notifier, transport: Callable[[], Any], outputs: Callable[[], Any],
                 metrics: Callable[[], Any], discovery: Callable[[], Any],
                 quality: Callable[[], Any] = lambda: None, update_bytes: Callable[[], int] = lambda: 0) -> None:
        self._config = config
        # built by the telemetry thread after READY=1: its imports (glob, subprocess) and the
        # discovery of hwmon, thermal and power files are not on the way to the first frame
        self._make_collector = collector
        self._collector: TelemetryCollector | None = None
        self._collector_lock = threading.Lock()
        self._host = host
        self._notifier = notifier
        self._transport, self._outputs, self._metrics, self._discovery = transport, outputs, metrics, discovery
        self._quality = quality
        self._update_bytes = update_bytes
        self.last: dict | None = None  # the last telemetry payload
        self._interactive = sys.stderr.isatty()
        self._refresh_at: float | None = None  # a sample soon: the served model changed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def collector(self) -> TelemetryCollector:
        """The collector, built by the first caller (the telemetry thread right after READY=1)."""
        with self._collector_lock:
            if self._collector is None:
                self._collector = self._make_collector()
            return self._collector

    def start(self, ready: threading.Event) -> None:
        self._thread = threading.Thread(target=self._run, args=(ready,), name="telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3.0)

    def refresh(self) -> None:
        """The served model changed (a switch, a rollback): sample again half a second from now,
        once the new model has served some frames, instead of showing the old model's figures
        for up to an interval."""
        self._refresh_at = time.monotonic() + 0.5

    def status_line(self) -> str:
        m = self._host.model_info
        t = (self.last or {}).get("inference") or {}
        trial = " trial" if m.get("trial") else ""
        return f"serving {m.get('name')} v{m.get('version')} slot {m.get('slot')}{trial}, {t.get('fps', 0)} fps"

    def sample(self) -> dict:
        """Collect one telemetry payload and publish it."""
        loop = self._host.loop
        assert loop is not None
        tr, outs = self._transport(), self._outputs()
        extra = {}
        if tr is not None:
            dropped = tr.take_dropped()
            if dropped:
                extra["dropped"] = dropped
            if outs is not None and (outs.dropped or tr.backlog_dropped):
                extra["output_dropped"] = outs.dropped + tr.backlog_dropped
        if self._update_bytes():
            extra["update_bytes"] = self._update_bytes()
        q = self._quality()  # its windows were judged on this tick (_run), before the sample
        if q is not None:
            figures = q.figures()
            if figures:
                extra["quality"] = figures
        m = self._host.model_info
        model = {k: m.get(k) for k in ("name", "version", "slot", "trial")}
        if m.get("staged"):  # downloaded and checked, switching in its window (update/staged.py)
            model["staged"] = m["staged"]
        dlg = getattr(loop.model, "delegate", None)
        if dlg:  # the accelerator the model runs on, or that it fell back to the CPU
            model["delegate"] = {"name": dlg["name"], "state": dlg["state"]}
        payload = self.collector().collect(model=model, inference=loop.snapshot(), extra=extra or None)
        self.last = payload
        if tr is not None:
            tr.publish_telemetry(payload)
        return payload

    def _run(self, ready: threading.Event) -> None:
        """From READY on; intervals down to 0.1 s are honoured."""
        while not ready.wait(0.5):
            if self._stop.is_set():
                return
        # the first window starts at READY and lasts up to half a second: its CPU share is the
        # serving cost, not the start-up (imports, model load, slot hashing)
        self.collector().begin_window()
        # a refresh asked for before READY=1 (the model was set at load) is this first sample:
        # left pending, on a slow start it closed a window of a few ms, and CPU time counted in
        # 10 ms ticks read 0% or 400% of a core
        self._refresh_at = None
        next_tel = time.monotonic() + min(0.5, self._config().telemetry.interval_s)
        next_line = next_tel + self._config().telemetry.interval_s
        while not self._stop.is_set():
            now = time.monotonic()
            next_tel = min(next_tel, now + self._config().telemetry.interval_s)  # config.set shortened it
            if self._refresh_at is not None:
                next_tel, self._refresh_at = min(next_tel, self._refresh_at), None
            if self._stop.wait(max(0.0, min(0.5, next_tel - now))):
                return
            try:
                metrics, discovery, quality = self._metrics(), self._discovery(), self._quality()
                if quality is not None:
                    quality.poll()  # windows are judged here, never on the inference thread
                if metrics is not None:
                    metrics.sample()
                if discovery is not None:
                    discovery.tick()
                now = time.monotonic()
                if now < next_tel:
                    continue
                cfg = self._config()
                interval = cfg.telemetry.interval_s
                next_tel = max(next_tel + interval, now + interval / 2)  # no drift, no burst
                self.sample()
                if metrics is not None and cfg.metrics.textfile:
                    metrics.write_textfile(cfg.metrics.textfile)
                self._notifier.status(self.status_line())
                if self.last and (self._interactive or now >= next_line):
                    next_line = now + 60
                    log.info("%s", figures_line(self.last))
            except Exception:  # noqa: BLE001 - telemetry must outlive one bad sample
                log.exception("telemetry sample failed")
