"""The daemon: wires the engine, input, loop, slots, updater, telemetry and transports together.

Threads: the inference loop; the dispatcher (all commands, from MQTT and the control socket);
paho's network thread (enqueue only); the control socket server; the updater's worker. The main
thread only supervises: it handles queued signals, pings the systemd watchdog while the
inference loop makes progress, and publishes telemetry every interval. Signal handlers only
queue the signal (gunicorn's rule).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

import numpy as np

from edgeagent import __version__
from edgeagent import config as config_mod
from edgeagent.config import Config
from edgeagent.control.dispatcher import Dispatcher, require
from edgeagent.control.server import ControlServer
from edgeagent.engine.model import Model
from edgeagent.errors import ConfigError, EdgeAgentError, ModelError
from edgeagent.inputs.factory import make_source
from edgeagent.inputs.resilient import ResilientSource
from edgeagent.runtime.loop import InferenceLoop
from edgeagent.service.events import EventBus
from edgeagent.service.sdnotify import Notifier
from edgeagent.state.store import SlotStore
from edgeagent.state.timefloor import TimeFloor
from edgeagent.telemetry.collector import TelemetryCollector
from edgeagent.telemetry.figures import figures_line

log = logging.getLogger("edgeagent")

# Exit status when the daemon must restart to leave a stuck interpreter (state already persisted).
# Not 0 (Restart=on-failure restarts it) and not 2 (configuration errors, which a restart cannot fix).
EXIT_RESTART = 3
_RESTART = -1  # queued like a signal
_FIRST_FRAME = -2  # queued by the inference thread once: READY=1 goes out at the first frame
CLOCK_FLOOR_EVERY_S = 3600.0


class Agent:
    def __init__(self, cfg: Config, *, notifier: Notifier | None = None) -> None:
        self.config = cfg
        self.events = EventBus()
        self.dispatcher = Dispatcher()
        self.notifier = notifier or Notifier()
        self.store = SlotStore(cfg.state_dir)
        self.started_at = time.time()
        self.loop: InferenceLoop | None = None
        self.model_info: dict = {}
        self.transport: Any = None
        self.control: ControlServer | None = None
        self.updater: Any = None
        self.follower: Any = None
        self.metrics: Any = None
        self.discovery: Any = None
        self.telemetry = TelemetryCollector(cfg.telemetry, cfg.device_id)
        self.last_telemetry: dict | None = None
        # SimpleQueue: its put is reentrant. A signal handler runs between two bytecodes of the
        # main thread, possibly inside Queue.get while it holds the queue's lock, and a
        # queue.Queue.put there deadlocks: the daemon then ignores SIGTERM until systemd kills it.
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self.restart_reason: str | None = None
        self._interactive = sys.stderr.isatty()

    # -- models -----------------------------------------------------------------------------
    def load_model(self, path: str | os.PathLike) -> Model:
        m = self.config.model
        return Model.load(
            str(path),
            backend=m.backend,
            num_threads=m.num_threads,
            delegate=m.delegate,
            input_mean=m.input_mean,
            input_std=m.input_std,
        )

    def set_model_info(self, info: dict) -> None:
        """Called whenever the served model changes (start, swap, rollback)."""
        self.model_info = info
        if self.transport is not None:
            self.transport.set_birth_info(info)

    def _boot_model(self) -> Model:
        """Pick the slot to serve (the store's boot rules), load it; a broken one falls back."""
        m = self.config.model
        # seeding copies and hashes model.initial, and the slots are hashed: ask systemd for time
        # in proportion to the model (10 MB/s, a slow SD card) before that work, not after
        paths = [m.initial] if m.initial else []
        paths += [self.store.slot_path(s) for s in ("a", "b")]
        size = max((os.path.getsize(p) for p in paths if os.path.isfile(p)), default=0)
        self.notifier.extend_timeout(60 + size / 10e6, "checking the model slots")
        plan = self.store.boot(
            model_name=m.name,
            initial=m.initial,
            initial_version=m.initial_version,
            max_attempts=self.config.update.max_trial_attempts,
            max_crashes=self.config.update.max_crash_restarts,
        )
        for ev in plan.events:
            ev = dict(ev)
            self.events.emit(ev.pop("event"), **ev)
        self.boot_plan = plan
        try:
            model = self.load_model(plan.path)
        except ModelError as e:
            log.error("slot %s model does not load: %s", plan.slot, e)
            self.store.rollback(f"load failed: {e.message}", mark_bad=True)
            self.events.emit("rollback", reason=f"slot {plan.slot} does not load: {e.code}", slot=plan.slot)
            plan = self.store.boot(
                model_name=m.name, initial=m.initial, initial_version=m.initial_version,
                max_attempts=self.config.update.max_trial_attempts,
                max_crashes=self.config.update.max_crash_restarts,
            )
            self.boot_plan = plan
            model = self.load_model(plan.path)
        info = plan.info
        self.set_model_info({
            "name": info.model, "version": info.version, "slot": plan.slot, "sha256": info.sha256,
            "trial": plan.trial is not None,
        })
        self.events.emit("model.loaded", model=self.model_info, backend=model.backend)
        return model

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        # Bind the control socket first: a second daemon on the same state must stop here,
        # before it touches state.json. Commands queue until the dispatcher starts below.
        self.control = ControlServer(cfg.control.socket, self.dispatcher, self.events)
        self.control.start()
        model = self._boot_model()
        self._observe_clock()
        source = ResilientSource(make_source(cfg.input, model.inputs[0]), on_state=self._on_input_state)
        source.open()
        self.loop = InferenceLoop(
            model, source, rate_hz=cfg.input.rate_hz,
            on_output=self._on_output if cfg.output.publish != "none" and cfg.mqtt.host else None,
            output_interval_s=1.0 / cfg.output.max_rate_hz if cfg.output.max_rate_hz else 1.0,
        )
        self._register_ops()
        from edgeagent.update.manager import UpdateManager  # the updater needs the loop

        self.updater = UpdateManager(self)
        self.updater.register(self.dispatcher)
        from edgeagent.update.follower import RolloutFollower

        self.follower = RolloutFollower(self)
        self.dispatcher.start()
        if cfg.mqtt.host:
            self._start_transport()
        self._start_metrics()
        self.loop.on_first_frame = lambda: self._signals.put(_FIRST_FRAME)
        self.loop.start()
        self._serving_since = time.monotonic()
        self._boot_confirmed = False
        self.updater.resume(self.boot_plan)
        self.follower.start()  # after resume: an update under way is seen as such
        log.info("serving %s v%s from slot %s (%s backend, input %s at %s Hz)",
                 self.model_info["name"], self.model_info["version"], self.model_info["slot"],
                 model.backend, cfg.input.source, cfg.input.rate_hz)

    def _check_ready(self) -> bool:
        """READY=1 once the model serves: the first frame went through. With the input down
        (camera unplugged at boot) the model is loaded and the loop alive, so we are as ready as
        the input allows: report it rather than have systemd kill a daemon that would recover."""
        assert self.loop is not None
        if self.loop.first_frame.is_set():
            self.notifier.ready(self._status_line())
            return True
        if self.loop.input_errors:
            log.warning("ready without input: the %s source is down and retried", self.config.input.source)
            self.notifier.ready(self._status_line() + " (input down)")
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
            on_chunk=self._on_chunk,
            on_rollout=self.follower.on_doc if self.follower is not None else None,
            on_connection=self._on_connection,
        )
        self.transport.set_birth_info(self.model_info)
        self.events.subscribe(self.transport.publish_event)
        if cfg.homeassistant.discovery:
            from edgeagent.transport.homeassistant import Discovery

            self.discovery = Discovery(self)
            self.discovery.attach(self.transport)
        self.transport.start()

    def _start_metrics(self) -> None:
        mc = self.config.metrics
        if not (mc.textfile or mc.listen):
            return
        from edgeagent.telemetry.prometheus import AgentMetrics

        self.metrics = AgentMetrics(self)
        if mc.listen:
            try:
                self.metrics.serve(mc.listen)
            except OSError as e:  # a port in use must not stop the model serving
                log.error("metrics: cannot serve on %s: %s; continuing without the endpoint", mc.listen,
                          e.strerror or e)

    def _on_connection(self, up: bool, why: str) -> None:
        if up and self.follower is not None:
            self.follower.on_connected()  # the retained result again (a broker that restarted lost it)
        if up and self.discovery is not None:
            self.discovery.on_connected()

    def _on_chunk(self, transfer_id: str, index: int, data: bytes) -> None:
        if self.updater is not None:
            self.updater.on_chunk(transfer_id, index, data)

    def _on_input_state(self, name: str, fields: dict) -> None:
        self.events.emit(name, **fields)

    def _on_output(self, model: Any, outs: list[np.ndarray]) -> None:
        if self.transport is None:
            return
        full = self.config.output.publish == "full"
        items = []
        for spec, o in zip(model.outputs, outs):
            flat = o.reshape(-1)
            item = {"name": spec.name, "shape": list(o.shape)}
            if flat.size:
                item.update(argmax=int(flat.argmax()), max=float(flat.max()), mean=float(flat.mean()))
            if full:
                item["values"] = flat.tolist()
            items.append(item)
        self.transport.publish("output", {"ts": round(time.time(), 3), "model": self.model_info.get("version"), "outputs": items}, qos=0)

    def _observe_clock(self) -> None:
        """Keep the persisted time floor (update expiry on devices without an RTC) near now."""
        self._clock_checked = time.monotonic()
        try:
            if not TimeFloor(self.config.state_dir).observe_wall_clock():
                log.warning("the wall clock is below the last time this device saw: not synchronised yet "
                            "(update expiry is judged against the saved time floor)")
        except OSError as e:
            log.warning("could not save the time floor: %s", e)

    def request_restart(self, reason: str) -> None:
        """Leave through systemd: the inference thread is stuck in native code that cannot be
        interrupted. Whatever must survive has been persisted by the caller."""
        if self.restart_reason is None:
            self.restart_reason = reason
            log.error("restarting: %s", reason)
            self._signals.put(_RESTART)

    def stall_limit_s(self) -> float:
        """How long the served model may hold the loop in one call before it counts as hung."""
        from edgeagent.update.probation import stall_limit_s

        assert self.loop is not None
        p50 = self.loop.counters.to_dict()["invoke_p50_ms"] or 0.0
        frame_s = max(1.0 / self.loop.rate_hz if self.loop.rate_hz else 0.0, p50 / 1e3)
        return stall_limit_s(frame_s, self.notifier.watchdog_s)

    def _supervise_model(self, now: float) -> None:
        """Outside a trial (probation judges those), a model that holds the loop far past its own
        frame time is hung: restart, so the crash-window count can roll it back if it does it
        again. And once a model has served a whole crash window, its starts were not crashes."""
        assert self.loop is not None
        on_trial = self.updater is not None and self.updater.on_trial
        stalled = self.loop.model_stalled_s(now)
        if not on_trial and stalled > self.stall_limit_s():
            self.request_restart(f"inference stalled inside the model for {stalled:.1f} s")
        elif not self._boot_confirmed and not on_trial and not stalled \
                and time.monotonic() - self._serving_since >= self.config.update.crash_window_s:
            self._boot_confirmed = True
            self.store.confirm_boot()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: self._signals.put(s))
        # `kill -USR1` dumps every thread's stack to stderr (the journal): for a daemon that hangs
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        self.start()
        assert self.loop is not None
        wd = self.notifier.watchdog_s
        next_tel = time.monotonic()
        next_line = time.monotonic() + self.config.telemetry.interval_s
        ready = False
        while True:
            # wake for the next telemetry sample (intervals down to 0.1 s are honoured), at
            # least every 0.5 s for supervision, and at once for a signal or the first frame
            now = time.monotonic()
            next_tel = min(next_tel, now + self.config.telemetry.interval_s)  # config.set shortened it
            wait = 0.5 if not ready else max(0.0, min(0.5, next_tel - now))
            try:
                sig = self._signals.get(timeout=min(wait, wd / 4) if wd else wait)
            except queue.Empty:
                sig = None
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("received %s, stopping", signal.Signals(sig).name)
                break
            if sig == _RESTART:
                break
            if sig == signal.SIGHUP:
                log.info("SIGHUP: configuration reload needs a restart; ignoring")
            if not ready:
                ready = self._check_ready()
                if not ready:
                    continue  # no watchdog pings before the model serves
            now = time.monotonic()
            # The watchdog is fed only while the inference loop makes progress: a hung loop
            # (stuck invoke, deadlock) stops the pings and systemd restarts us.
            if wd and now - self.loop.heartbeat < wd / 2:
                self.notifier.watchdog()
            self._supervise_model(now)
            if self.metrics is not None:
                self.metrics.sample()
            if self.discovery is not None:
                self.discovery.tick()
            if now - self._clock_checked >= CLOCK_FLOOR_EVERY_S:
                self._observe_clock()
            if self.transport is not None:
                self.transport.ensure_running()
            if now >= next_tel:
                interval = self.config.telemetry.interval_s
                next_tel = max(next_tel + interval, now + interval / 2)  # no drift, no burst
                self.publish_telemetry()
                if self.metrics is not None and self.config.metrics.textfile:
                    self.metrics.write_textfile(self.config.metrics.textfile)
                self.notifier.status(self._status_line())
                if self.last_telemetry and (self._interactive or now >= next_line):
                    next_line = now + 60
                    log.info("%s", figures_line(self.last_telemetry))
        self.stop()
        return EXIT_RESTART if self.restart_reason else 0

    def publish_telemetry(self) -> dict:
        assert self.loop is not None
        extra = {}
        if self.transport is not None:
            dropped = self.transport.take_dropped()
            if dropped:
                extra["dropped"] = dropped
        payload = self.telemetry.collect(
            model={k: self.model_info.get(k) for k in ("name", "version", "slot", "trial")},
            inference=self.loop.snapshot(),
            extra=extra or None,
        )
        self.last_telemetry = payload
        if self.transport is not None:
            self.transport.publish_telemetry(payload)
        return payload

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.notifier.stopping()
        if self.restart_reason is None and self.loop is not None and self.loop.running \
                and not self.loop.model_stalled_s() and not (self.updater and self.updater.on_trial):
            try:  # a clean stop of a healthy model: its starts so far were not crashes
                self.store.confirm_boot()
            except EdgeAgentError as e:
                log.warning("could not record the clean stop: %s", e)
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
        if self.control is not None:
            self.control.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.dispatcher.stop()
        if self.transport is not None:
            self.transport.stop(reason="shutdown")
        self.notifier.close()
        log.info("stopped")

    def _status_line(self) -> str:
        m = self.model_info
        t = (self.last_telemetry or {}).get("inference") or {}
        trial = " trial" if m.get("trial") else ""
        return f"serving {m.get('name')} v{m.get('version')} slot {m.get('slot')}{trial}, {t.get('fps', 0)} fps"

    # -- core ops ---------------------------------------------------------------------------
    def status(self) -> dict:
        st = self.store.state()
        return {
            "daemon": "running",
            "agent": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "model": {k: self.model_info.get(k) for k in ("name", "version", "slot", "sha256")},
            "backend": getattr(self.loop.model, "backend", None) if self.loop else None,
            "trial": self.updater.trial_status() if self.updater else (st.trial if st else None),
            "update": self.updater.progress() if self.updater else None,
            "rollout": self.follower.current() if self.follower else None,
            "telemetry": self.last_telemetry,
            "mqtt": self.transport.stats() if self.transport is not None else None,
            "events": self.events.recent(10),
        }

    def _register_ops(self) -> None:
        d = self.dispatcher
        d.register("ping", lambda args, ctx: {"pong": True, "agent": __version__, "ts": round(time.time(), 3)})
        d.register("status", lambda args, ctx: self.status())
        d.register("config.get", self._op_config_get)
        d.register("config.set", self._op_config_set)

    def _op_config_get(self, args: dict, ctx: Any) -> dict:
        key = require(args, "key", str, optional=True)
        if key is None:
            return {"config": config_mod.to_dict(self.config), "tunable": list(config_mod.RUNTIME_TUNABLE)}
        return {"key": key, "value": config_mod.get_key(self.config, key)}

    def _op_config_set(self, args: dict, ctx: Any) -> dict:
        key = require(args, "key", str)
        if "value" not in args:
            raise ConfigError("cmd.bad_args", "args.value: required")
        new = config_mod.with_key(self.config, key, args["value"])
        old_value = config_mod.get_key(self.config, key)
        self.config = new
        if key == "input.rate_hz" and self.loop is not None:
            self.loop.set_rate(new.input.rate_hz)
        value = config_mod.get_key(new, key)
        log.info("config.set %s: %r -> %r (until restart)", key, old_value, value)
        return {"key": key, "value": value, "previous": old_value, "persisted": False}


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
