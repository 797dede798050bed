"""Prometheus metrics: a node_exporter textfile and, optionally, an HTTP /metrics endpoint.

prometheus-client does the exposition format, the registry, the atomic textfile write and the
HTTP server; this module is one custom collector over the agent's live state, so every scrape
reads the same figures telemetry publishes. Names follow Prometheus conventions: base units
(seconds, watts, joules, celsius), `_total` for counters, the model version as an `_info`
metric. Latency is a histogram fed with every frame's latency (the loop's ring buffer is read
at least twice a second), never per-device quantiles, so it aggregates across a fleet.

The textfile is rewritten every telemetry interval with a rename (atomic); it is not fsynced:
that would wear an SD card every few seconds for a file the next interval rewrites anyway.
"""

from __future__ import annotations

import logging
import socket
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
import threading
from typing import Any, Callable, Protocol

import numpy as np

log = logging.getLogger("edgeagent.metrics")

# seconds: 0.5 ms (a small model on a Pi 5) to 10 s (a big one on a Pi Zero)
MAX_CONNECTIONS = 8
IDLE_TIMEOUT_S = 5.0

BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BOUNDS_MS = np.array(BUCKETS_S) * 1e3
UPDATE_RESULTS = {"update.committed": "committed", "update.rolled_back": "rolled_back",
                  "update.rejected": "rejected", "rollback": "manual_rollback"}


class Readings(Protocol):
    """What the exporter reads of the running daemon (service.agent.Agent provides it)."""

    started_at: float

    @property
    def loop(self) -> Any: ...  # runtime.loop.InferenceLoop, None before it starts

    @property
    def model_info(self) -> dict: ...

    @property
    def last_telemetry(self) -> dict | None: ...

    @property
    def mqtt(self) -> Any: ...  # the transport (connected, reconnects), None without MQTT


class Subscribable(Protocol):
    def subscribe(self, sink: Callable[[dict], None]) -> Callable[[], None]: ...


class AgentMetrics:
    """A prometheus_client collector over the daemon's readings (registered in its own registry)."""

    def __init__(self, source: Readings, events: Subscribable) -> None:
        from prometheus_client import CollectorRegistry

        self.source = source
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._buckets = np.zeros(len(BUCKETS_S) + 1, dtype=np.int64)  # the last one is +Inf
        self._sum_s = 0.0
        self._since = 0
        self._stats: Any = None  # the loop's latency window (a new loop would reset the count)
        self._updates = {v: 0 for v in UPDATE_RESULTS.values()}
        self._server: Any = None
        self.registry.register(self)
        events.subscribe(self._on_event)

    def _on_event(self, ev: dict) -> None:
        name = UPDATE_RESULTS.get(ev.get("event", ""))
        if name:
            with self._lock:
                self._updates[name] += 1

    def sample(self) -> None:
        """Move the frames since the last call into the histogram (main loop, ≥ twice a second)."""
        loop = self.source.loop
        if loop is None:
            return
        with self._lock:
            if loop.stats is not self._stats:
                self._stats, self._since = loop.stats, 0
            ms, self._since = loop.stats.totals_since(self._since)
            if ms.size:
                self._buckets += np.bincount(np.searchsorted(_BOUNDS_MS, ms, side="left"),
                                             minlength=len(BUCKETS_S) + 1)
                self._sum_s += float(ms.sum()) / 1e3

    # -- prometheus_client's Collector protocol ----------------------------------------------
    def collect(self) -> Any:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily)

        a = self.source
        loop = a.loop
        t = a.last_telemetry or {}
        m = a.model_info or {}
        info = InfoMetricFamily("edgeagent_model", "The model being served (value 1)",
                                labels=["name", "version", "slot", "sha256", "trial"])
        info.add_metric([], {"name": str(m.get("name")), "version": str(m.get("version")), "slot": str(m.get("slot")),
                             "sha256": str(m.get("sha256")), "trial": str(bool(m.get("trial"))).lower()})
        yield info
        yield GaugeMetricFamily("edgeagent_start_time_seconds", "When the daemon started (Unix time)",
                                value=a.started_at)
        if loop is not None:
            yield CounterMetricFamily("edgeagent_inferences", "Frames run through the model", value=loop.stats.count)
            yield CounterMetricFamily("edgeagent_inference_errors", "Model errors (invoke failed, non-finite output)",
                                      value=loop.errors)
            yield CounterMetricFamily("edgeagent_input_errors", "Input read failures", value=loop.input_errors)
            yield CounterMetricFamily("edgeagent_deadline_misses", "Frames that started late for input.rate_hz",
                                      value=loop.deadline_misses)
            yield GaugeMetricFamily("edgeagent_input_rate_hertz", "The configured frame rate (0: as fast as it runs)",
                                    value=loop.rate_hz)
        with self._lock:
            cum = np.cumsum(self._buckets)
            total_s = self._sum_s
            updates = dict(self._updates)
        h = HistogramMetricFamily("edgeagent_inference_latency_seconds",
                                  "Per-frame latency: preprocess, invoke and postprocess")
        h.add_metric([], [(repr(b), int(c)) for b, c in zip(BUCKETS_S, cum[:-1])] + [("+Inf", int(cum[-1]))],
                     sum_value=total_s)
        yield h
        power = t.get("power") or {}
        pw = GaugeMetricFamily("edgeagent_power_watts", "Power draw; source=estimate is the agent's CPU share of a "
                               "board profile, not a measurement", labels=["scope", "source"])
        for scope in ("total", "agent"):
            if isinstance(power.get(f"{scope}_w"), (int, float)):
                pw.add_metric([scope, str(power.get("source"))], power[f"{scope}_w"])
        yield pw
        epi = t.get("energy_per_inference_mj")
        if isinstance(epi, (int, float)):
            yield GaugeMetricFamily("edgeagent_energy_per_inference_joules", "Measured energy per inference",
                                    value=epi / 1e3)
        temp = GaugeMetricFamily("edgeagent_temperature_celsius", "Thermal zones", labels=["zone"])
        for zone, v in (t.get("thermal") or {}).items():
            if isinstance(v, (int, float)):
                temp.add_metric([str(zone)], v)
        yield temp
        thr = t.get("throttled")
        if isinstance(thr, dict):
            from edgeagent.telemetry.collector import THROTTLE_BITS

            g = GaugeMetricFamily("edgeagent_throttled", "Raspberry Pi throttling flags now (1 = set)", labels=["flag"])
            for flag in THROTTLE_BITS.values():
                g.add_metric([flag], 1.0 if flag in (thr.get("now") or []) else 0.0)
            yield g
        q = t.get("quality")
        if isinstance(q, dict) and q.get("reference") in ("signed", "learned"):
            psi = GaugeMetricFamily("edgeagent_quality_psi", "Population stability index of the last window against "
                                    "the model's reference", labels=["metric", "reference"])
            for metric in ("class", "confidence", "input"):
                if isinstance(q.get(f"psi_{metric}"), (int, float)):
                    psi.add_metric([metric, q["reference"]], q[f"psi_{metric}"])
            yield psi
            dr = GaugeMetricFamily("edgeagent_quality_drift", "1 while model.drift is raised for the metric",
                                   labels=["metric"])
            for metric in ("class", "confidence", "input"):
                dr.add_metric([metric], 1.0 if metric in (q.get("drift") or []) else 0.0)
            yield dr
        if isinstance(q, dict) and isinstance(q.get("low_confidence_pct"), (int, float)):
            yield GaugeMetricFamily("edgeagent_quality_low_confidence_ratio", "Share of the last window's frames "
                                    "under the low-confidence line", value=q["low_confidence_pct"] / 100.0)
        yield CounterMetricFamily("edgeagent_update_bytes", "Payload bytes fetched by updates since the daemon started",
                                  value=t.get("update_bytes") or 0)
        u = CounterMetricFamily("edgeagent_updates", "Update outcomes since the daemon started", labels=["result"])
        for k, v in updates.items():
            u.add_metric([k], v)
        yield u
        tr = a.mqtt
        if tr is not None:
            yield GaugeMetricFamily("edgeagent_mqtt_connected", "1 while connected to the broker",
                                    value=1.0 if tr.connected else 0.0)
            yield CounterMetricFamily("edgeagent_mqtt_reconnects", "Broker reconnects", value=tr.reconnects)

    # -- outputs -----------------------------------------------------------------------------
    def write_textfile(self, path: str) -> None:
        from prometheus_client import write_to_textfile

        try:
            write_to_textfile(path, self.registry)
        except OSError as e:
            log.warning("metrics: cannot write %s: %s", path, e)

    def serve(self, listen: str) -> None:
        """/metrics on its own small server: at most MAX_CONNECTIONS at once, each dropped after
        IDLE_TIMEOUT_S of silence (prometheus-client's own server starts a thread per connection,
        uncapped: 1,500 idle connections were 1,510 threads)."""
        from prometheus_client import make_wsgi_app

        host, _, port = listen.rpartition(":")
        self._server = capped_server(host.strip("[]"), int(port), make_wsgi_app(self.registry))
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics: serving http://%s/metrics", listen)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None




class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT_S  # a connection that says nothing for this long is closed

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class _CappedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1  # full: this one is closed at once, the scraper retries
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread to be had
            self._slots.release()
            self.refused += 1
            self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def capped_server(host: str, port: int, app: Any) -> WSGIServer:
    class Server(_CappedServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return make_server(host, port, app, Server, handler_class=_QuietHandler)
