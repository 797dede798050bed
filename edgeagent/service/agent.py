"""The daemon: wires the engine, input, loop, slots, updater, telemetry and transports together.

Threads: the inference loop; the dispatcher (all commands, from MQTT and the control socket);
paho's network thread (every socket write); the output publisher; the control socket server;
the updater's worker; telemetry. The main thread only supervises: it handles queued signals,
pings the systemd watchdog while the inference loop makes progress and watches for a hung
model; it does no network or subprocess work, so nothing slow delays WATCHDOG=1. Signal
handlers only queue the signal (gunicorn's rule). The agent wires the parts together; each part
gets only the interface it uses (the updater a ModelHost, the follower an update API).
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

from edgeagent import __version__
from edgeagent.config import Config
from edgeagent.control.dispatcher import Dispatcher
from edgeagent.control.server import ControlServer
from edgeagent.errors import ConfigError, EdgeAgentError
from edgeagent.events import EventBus
from edgeagent.inputs.factory import make_source
from edgeagent.inputs.resilient import ResilientSource
from edgeagent.runtime.loop import InferenceLoop
from edgeagent.service import ops
from edgeagent.service.boot import boot_model, observe_clock
from edgeagent.service.host import ServingHost
from edgeagent.service.monitoring import start_metrics, wire_quality
from edgeagent.service.reporter import Reporter
from edgeagent.service.sdnotify import Notifier
from edgeagent.state.lock import DaemonLock
from edgeagent.state.store import SlotStore

log = logging.getLogger("edgeagent")

# A restart out of a stuck interpreter (state persisted): not 0, which Restart=on-failure
EXIT_RESTART = 3  # would not restart, and not 2, a configuration error a restart cannot fix
_RESTART = -1  # queued like a signal
_FIRST_FRAME = -2  # queued by the inference thread once: READY=1 goes out at the first frame
CLOCK_FLOOR_EVERY_S = 3600.0
CONTROL_PLANE_WAIT_S = 0.25  # built after READY=1, or after this long without the first frame


class Agent:
    def __init__(self, cfg: Config, *, notifier: Notifier | None = None) -> None:
        self.config = cfg
        self.events = EventBus()
        self.dispatcher = Dispatcher()
        self.notifier = notifier or Notifier()
        self.store = SlotStore(cfg.state_dir)
        self.daemon_lock = DaemonLock(cfg.state_dir)
        self.started_at = time.time()
        self.host = ServingHost(lambda: self.config, watchdog_s=self.notifier.watchdog_s,
                                on_restart=lambda reason: self._signals.put(_RESTART))
        self.host.on_model_info(self._on_model_info)
        self.transport: Any = None
        self.outputs: Any = None
        self.control: ControlServer | None = None
        self.updater: Any = None
        self.follower: Any = None
        self.metrics: Any = None
        self.discovery: Any = None
        self.quality: Any = None  # runtime.quality.QualityMonitor, with [monitor] enabled
        self.capture: Any = None  # runtime.capture.SampleCapture, with [monitor] capture (opt-in)
        # SimpleQueue: its put is reentrant. A signal handler runs between two bytecodes of the
        # main thread, possibly inside Queue.get while it holds the queue's lock, and a
        # queue.Queue.put there deadlocks: the daemon then ignores SIGTERM until systemd kills it.
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._term = False  # SIGTERM/SIGINT arrived (set by the signal handler)
        self.reporter = Reporter(config=lambda: self.config, collector=lambda: _collector(cfg), host=self.host,
                                 notifier=self.notifier, transport=lambda: self.transport,
                                 outputs=lambda: self.outputs, metrics=lambda: self.metrics,
                                 discovery=lambda: self.discovery, quality=lambda: self.quality,
                                 update_bytes=lambda: self.updater.bytes_total if self.updater else 0)

    # -- what the parts read (telemetry.prometheus.Readings, transport.homeassistant.Source) --
    @property
    def loop(self) -> InferenceLoop | None:
        return self.host.loop

    @property
    def model_info(self) -> dict:
        return self.host.model_info

    @property
    def restart_reason(self) -> str | None:
        return self.host.restart_reason

    @property
    def last_telemetry(self) -> dict | None:
        return self.reporter.last

    @property
    def mqtt(self) -> Any:
        return self.transport

    def thermal_zones(self) -> list[str]:
        return [z for z, _ in getattr(getattr(self.reporter.collector(), "thermal", None), "zones", [])]

    def update_progress(self) -> dict | None:
        return self.updater.progress() if self.updater is not None else None

    def installing_version(self) -> Any:
        return self.updater.installing_version() if self.updater is not None else None

    def _on_model_info(self, info: dict) -> None:
        self.reporter.refresh()  # status and P/telemetry show the new model's figures within a second
        if self.transport is not None:
            self.transport.set_birth_info(info)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        tf = cfg.metrics.textfile
        if tf and not os.path.isdir(os.path.dirname(os.path.abspath(tf))):  # a configuration fault: say so now,
            raise ConfigError("config.invalid", f"metrics.textfile {tf}: the folder "  # not every interval
                                                f"{os.path.dirname(os.path.abspath(tf))} does not exist")
        # The control socket first (a second daemon with the same config stops here: control.in_use),
        # then one daemon per state directory (flock, held for life: a second one with another
        # socket stops here: state.in_use), both before state.json is touched; commands queue.
        self.control = ControlServer(cfg.control.socket, self.dispatcher, self.events, outputs=lambda: self.outputs)
        self.control.start()
        self.daemon_lock.acquire()
        model, self.boot_plan = boot_model(cfg, self.store, self.host, self.notifier, self.events,
                                           stopping=lambda: self._term)
        source = ResilientSource(make_source(cfg.input, model.inputs[0]), on_state=self._on_input_state)
        source.open()
        if cfg.output.publish != "none":  # to P/output with a broker, and to local followers always
            from edgeagent.transport.outputs import OutputPublisher

            self.outputs = OutputPublisher((lambda sub, payload: self.transport and self.transport.publish(
                sub, payload, qos=0)) if cfg.mqtt.host else None, full=cfg.output.publish == "full",
                                           version=lambda: self.host.model_info.get("version"), top_k=cfg.output.top_k)
        self.quality, self.capture = wire_quality(cfg, self.host, self.events, self.dispatcher,
                                                  lambda sub, data: self.transport and self.transport.publish(sub, data, qos=1))
        self.host.loop = InferenceLoop(
            model, source, rate_hz=cfg.input.rate_hz,
            check_finite_every=cfg.model.check_finite_every,
            on_output=self.outputs.offer if self.outputs is not None else None,
            output_interval_s=1.0 / cfg.output.max_rate_hz if cfg.output.max_rate_hz else 1.0,
            on_frame=self.quality.on_frame if self.quality is not None else None)
        ops.register(self.dispatcher, status=self.status, get_config=lambda: self.config,
                     set_config=self._set_config)
        self.loop.on_first_frame = lambda: self._signals.put(_FIRST_FRAME)
        self.loop.start()
        self.metrics = start_metrics(self.config, self, self.events)  # a scrape after `systemctl start` is answered
        self._serving_since = time.monotonic()
        self._boot_confirmed = False
        self._plane_built = False
        log.info("serving %s v%s from slot %s (%s backend, input %s at %s Hz)",
                 self.model_info["name"], self.model_info["version"], self.model_info["slot"],
                 model.backend, cfg.input.source, cfg.input.rate_hz)

    def _start_control_plane(self) -> None:
        """The rest, built right after READY=1 (the model serves: the loop started first and ran
        its first frame), or after CONTROL_PLANE_WAIT_S without it (a first invoke that takes
        long, a model that hangs there: a rollback must still be heard): the updater (resuming an
        update under way), the rollout follower, MQTT, telemetry. The control socket accepts
        from the start and its commands wait in the dispatcher's queue meanwhile; Prometheus
        (when configured) listens before READY=1."""
        self._plane_built = True
        gc.enable()  # start-up ran without the cyclic GC (cli/main.py): its objects all live on
        cfg = self.config
        self._observe_clock()
        from edgeagent.update.manager import UpdateManager

        self.updater = UpdateManager(self.host, self.store, self.events, config=lambda: self.config,
                                     reply_routes=lambda route: self.transport.reply_to(route)
                                     if self.transport is not None else None)
        self.updater.register(self.dispatcher)
        from edgeagent.fleet.follower import RolloutFollower

        self.follower = RolloutFollower(
            device_id=cfg.device_id, state_dir=cfg.state_dir, slots=self.store.state, events=self.events,
            updates=self.updater, model_info=lambda: self.host.model_info,
            publish=lambda sub, payload: self.transport.publish(sub, payload, qos=1, retain=True)
            if self.transport is not None else None)
        if cfg.mqtt.host:
            self._start_transport()
        if self.outputs is not None:
            self.outputs.start()
        self.updater.resume(self.boot_plan)
        self.follower.start()  # after resume: an update under way is seen as such
        self.reporter.start(self._ready)
        self.dispatcher.start()  # last: a command is answered once all is up (staging tidied by resume())

    def _on_signal(self, sig: int, _frame: Any) -> None:
        """Queue it (reentrant); a stop also sets a flag the start-up work (checking model.initial) polls."""
        if sig in (signal.SIGTERM, signal.SIGINT):
            self._term = True
        self._signals.put(sig)

    def _check_ready(self) -> bool:
        """READY=1 once the model serves: the first frame went through. With the input down
        (camera unplugged at boot) the model is loaded and the loop alive, so we are as ready as
        the input allows: report it rather than have systemd kill a daemon that would recover."""
        assert self.loop is not None
        if self.loop.first_frame.is_set():
            self.notifier.ready(self.reporter.status_line())
            return True
        if self.loop.input_errors:
            log.warning("ready without input: the %s source is down and retried", self.config.input.source)
            self.notifier.ready(self.reporter.status_line() + " (input down)")
            return True
        return False

    def _start_transport(self) -> None:
        from edgeagent.transport.mqtt import MqttTransport

        cfg = self.config
        self.transport = MqttTransport(
            cfg.mqtt,
            device_id=cfg.device_id,
            topic_prefix=cfg.topic_prefix,
            groups=cfg.device.groups,
            agent_version=__version__,
            on_command=lambda payload, reply: self.dispatcher.submit(payload, reply, source="mqtt"),
            on_chunk=self.updater.on_chunk,
            on_rollout=self.follower.on_doc,
            on_connection=self._on_connection,
        )
        self.transport.set_birth_info(self.model_info)
        self.events.subscribe(self.transport.publish_event)
        if cfg.homeassistant.discovery:
            from edgeagent.transport.homeassistant import Discovery

            hc = cfg.homeassistant
            self.discovery = Discovery(self, self.transport, prefix=hc.prefix, device_id=cfg.device_id,
                                       topic_prefix=cfg.topic_prefix)
            self.discovery.attach()
        self.transport.start()

    def _on_connection(self, up: bool, why: str) -> None:
        if up and self.follower is not None:
            self.follower.on_connected()  # the retained result again (a broker that restarted lost it)
        if up and self.discovery is not None:
            self.discovery.on_connected()

    def _on_input_state(self, name: str, fields: dict) -> None:
        self.events.emit(name, **fields)

    def _observe_clock(self) -> None:
        self._clock_checked = time.monotonic()
        observe_clock(self.config)

    def _supervise_model(self, now: float) -> None:
        """Outside a trial (probation judges those), a model that holds the loop far past its own
        frame time is hung: restart, so the crash-window count can roll it back if it does it
        again. And once a model has served a whole crash window, its starts were not crashes."""
        assert self.loop is not None
        on_trial = self.updater is not None and self.updater.on_trial
        stalled = self.loop.model_stalled_s(now)
        if not on_trial and stalled > self.host.stall_limit_s():
            self.host.request_restart(f"inference stalled inside the model for {stalled:.1f} s")
        elif not self._boot_confirmed and not on_trial and not stalled \
                and time.monotonic() - self._serving_since >= self.config.update.crash_window_s:
            self._boot_confirmed = True
            try:
                self.store.confirm_boot()
            except (OSError, EdgeAgentError) as e:  # a full disk must not end a daemon that serves
                log.warning("could not record that the model served a whole crash window: %s", e)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        # `kill -USR1` dumps every thread's stack to stderr (the journal): for a daemon that hangs
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        self.start()
        assert self.loop is not None
        wd = self.notifier.watchdog_s
        supervise_s = min(0.5, wd / 4) if wd else 0.5  # a quarter of the watchdog period, 0.5 s at most
        ready = False
        while True:
            try:  # at once for a signal or the first frame; every 0.1 s until the control plane is built
                sig = self._signals.get(timeout=supervise_s if self._plane_built else 0.1)
            except queue.Empty:
                sig = None
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("received %s, stopping", signal.Signals(sig).name)
                break
            if sig == _RESTART:
                break
            if sig == signal.SIGHUP:
                log.info("SIGHUP: configuration reload needs a restart; ignoring")
            if not ready and (ready := self._check_ready()):
                self._ready.set()
            if not self._plane_built and (ready or time.monotonic() - self._serving_since >= CONTROL_PLANE_WAIT_S):
                self._start_control_plane()
            if not ready:
                continue  # no watchdog pings before the model serves
            now = time.monotonic()
            # The watchdog is fed only while the inference loop makes progress: a hung loop
            # (stuck invoke, deadlock) stops the pings and systemd restarts us.
            if wd and now - self.loop.heartbeat < wd / 2:
                self.notifier.watchdog()
            self._supervise_model(now)
            if now - self._clock_checked >= CLOCK_FLOOR_EVERY_S:
                self._observe_clock()
            if self.transport is not None:
                self.transport.ensure_running()
        self.stop()
        return EXIT_RESTART if self.restart_reason else 0

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.notifier.stopping()
        if self.restart_reason is None and self.loop is not None and self.loop.running \
                and not self.loop.model_stalled_s() and not (self.updater and self.updater.on_trial):
            try:  # a clean stop of a healthy model: its starts so far were not crashes
                self.store.confirm_boot()
            except (OSError, EdgeAgentError) as e:
                log.warning("could not record the clean stop: %s", e)
        self.reporter.stop()
        if self.follower is not None:
            self.follower.stop()
        if self.updater is not None:
            self.updater.stop()
        if self.loop is not None:
            self.loop.stop()
            try:
                self.loop.source.close()
            except Exception:  # noqa: BLE001
                pass
        for part in (self.outputs, self.capture):
            if part is not None:
                part.stop()
        if self.control is not None:
            self.control.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.dispatcher.stop()
        if self.transport is not None:
            self.transport.stop(reason="shutdown")
        self.notifier.close()
        self.daemon_lock.release()
        log.info("stopped")

    # -- core ops ---------------------------------------------------------------------------
    def status(self) -> dict:
        st = self.store.state()
        return {
            "daemon": "running",
            "agent": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "model": {k: self.model_info.get(k) for k in ("name", "version", "slot", "sha256", "labels")},
            "output": self.outputs.brief() if self.outputs else None,
            "backend": getattr(self.loop.model, "backend", None) if self.loop else None,
            "delegate": getattr(self.loop.model, "delegate", None) if self.loop else None,
            "trial": self.updater.trial_status() if self.updater else (st.trial if st else None),
            "staged": self.updater.staged_status() if self.updater else None,
            "update": self.updater.progress() if self.updater else None,
            "rollout": self.follower.current() if self.follower else None,
            "telemetry": self.last_telemetry,
            "mqtt": {**self.transport.stats(), "output_dropped": self.outputs.dropped if self.outputs else 0}
            if self.transport is not None else None,
            "events": self.events.recent(10),
        }

    def _set_config(self, new: Config, key: str) -> None:
        self.config = new
        if key == "input.rate_hz" and self.loop is not None:
            self.loop.set_rate(new.input.rate_hz)


def _collector(cfg: Config) -> Any:
    from edgeagent.telemetry.collector import TelemetryCollector

    return TelemetryCollector(cfg.telemetry, cfg.device_id)


def run_daemon(cfg: Config) -> int:
    agent = Agent(cfg)
    try:
        code = agent.run()
    except EdgeAgentError:
        agent.stop()
        raise
    if agent.restart_reason:
        # The inference thread is still inside native code: interpreter shutdown could wait on
        # it or free what it uses. Everything was persisted and stopped; leave now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
