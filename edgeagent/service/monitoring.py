"""The monitoring the daemon wires: the quality monitor (its events name the serving version, a
learned reference is stored beside the model in its slot, chosen frames go to the sample capture,
and the samples are served by command, locally and over MQTT), and Prometheus when configured."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgeagent.config import Config
from edgeagent.control.dispatcher import Dispatcher, require
from edgeagent.errors import CommandError
from edgeagent.events import EventBus
from edgeagent.service.host import ServingHost
from edgeagent.state import reference

if TYPE_CHECKING:  # the monitor's modules are imported only with [monitor] enabled
    from edgeagent.runtime.capture import SampleCapture
    from edgeagent.runtime.quality import QualityMonitor
    from edgeagent.state.samples import SampleStore

log = logging.getLogger("edgeagent.quality")


def make_capture(cfg: Config, host: ServingHost) -> SampleCapture | None:
    m = cfg.monitor
    if not m.enabled or m.capture == "none":
        return None
    from edgeagent.runtime.capture import SampleCapture
    from edgeagent.state.samples import SampleStore

    store = SampleStore(Path(cfg.state_dir) / "samples", m.capture_max_bytes)
    return SampleCapture(store, min_interval_s=m.capture_min_interval_s, version=lambda: host.model_info.get("version"))


def make_monitor(cfg: Config, host: ServingHost, events: EventBus,
                 capture: SampleCapture | None = None) -> QualityMonitor | None:
    m = cfg.monitor
    if not m.enabled:
        return None
    from edgeagent.runtime.quality import QualityMonitor

    def emit(name: str, **fields: Any) -> None:
        events.emit(name, version=host.model_info.get("version"), **fields)

    def store_learned(model: Any, ref: reference.Reference) -> None:
        reference.write_beside(model.path, ref)
        log.info("learned a quality reference from %d frames of v%s", ref.frames, host.model_info.get("version"))

    return QualityMonitor(window=m.window, window_s=m.window_s, alarm_windows=m.alarm_windows,
                          learn_frames=m.learn_frames, emit=emit, on_trial=lambda: bool(host.model_info.get("trial")),
                          store_learned=store_learned, capture=capture.offer if capture is not None else None,
                          capture_mode=m.capture)


def register_samples(d: Dispatcher, store: SampleStore | None, publish: Callable[[str, bytes], None] | None,
                     max_inline: int) -> None:
    """samples.list, samples.get, samples.clear: locally and over MQTT. A sample larger than
    max_inline goes over MQTT as chunks on P/samples/ID/N, announced in the reply with their sha256
    (the same announcement as an update's transfer)."""
    def need() -> SampleStore:
        if store is None:
            raise CommandError("samples.off", "samples are not kept: set [monitor] capture (off by default)")
        return store

    def listing(args: dict, ctx: Any) -> dict:
        s = need()
        return {"samples": s.list(), "bytes": s.total_bytes(), "max_bytes": s.max_bytes}

    def get(args: dict, ctx: Any) -> dict:
        from edgeagent.state.samples import SampleError

        sid = require(args, "id", str)
        try:
            meta, data = need().get(sid)
        except SampleError as e:
            raise CommandError("samples.not_found", str(e)) from None
        if ctx.source != "mqtt" or len(data) <= max_inline or publish is None:
            import base64

            return {"meta": meta, "data_b64": base64.b64encode(data).decode()}
        from edgeagent.update.transfer import announce  # a sample over MQTT chunks: rare

        ann, chunks = announce(data, sid, max_inline)
        for i, c in enumerate(chunks):
            publish(f"samples/{sid}/{i}", c)
        return {"meta": meta, "transfer": {**ann.to_args(), "topic": f"samples/{sid}"}}

    def clear(args: dict, ctx: Any) -> dict:
        return {"cleared": need().clear()}

    d.register("samples.list", listing)
    d.register("samples.get", get)
    d.register("samples.clear", clear)


def wire_quality(cfg: Config, host: ServingHost, events: EventBus, d: Dispatcher,
                 publish: Callable[[str, bytes], None]) -> tuple[QualityMonitor | None, SampleCapture | None]:
    """The monitor, its capture (started here) and the samples commands, as [monitor] says."""
    capture = make_capture(cfg, host)
    register_samples(d, capture.store if capture is not None else None, publish, cfg.mqtt.max_message_bytes // 2)
    if capture is not None:
        capture.start()
    return make_monitor(cfg, host, events, capture), capture


def start_metrics(cfg: Config, readings: Any, events: EventBus) -> Any:
    """Prometheus (imported only when configured): the textfile and/or the HTTP endpoint."""
    mc = cfg.metrics
    if not (mc.textfile or mc.listen):
        return None
    from edgeagent.telemetry.prometheus import AgentMetrics

    metrics = AgentMetrics(readings, events)
    if mc.listen:
        try:
            metrics.serve(mc.listen)
        except OSError as e:  # a port in use must not stop the model serving
            log.error("metrics: cannot serve on %s: %s; continuing without the endpoint", mc.listen, e.strerror or e)
    return metrics
