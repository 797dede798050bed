"""`edgeagent top`: a live view of one device, like htop/jtop for the agent.

Locally it polls `status` over the control socket and follows its event stream; with --mqtt it
subscribes to the device's P/status, P/telemetry and P/events. Both feed one TopView, which
renders with rich on a terminal and as plain lines in a pipe.
"""

from __future__ import annotations

import argparse
import collections
import json
import queue
import sys
import threading
import time
from typing import Any, Iterator

from edgeagent.cli.common import load_config

SPARK = "▁▂▃▄▅▆▇█"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top", help="live view of the device: model, fps, latency, power, thermal, events")
    p.add_argument("--mqtt", metavar="HOST[:PORT]", help="watch a remote device through the broker")
    p.add_argument("--device", help="device id (with --mqtt)")
    p.add_argument("--fleet", action="store_true", help="with --mqtt: every device on the broker, one row each")
    p.add_argument("--group", help="with --fleet: only this group")
    p.add_argument("--topic-prefix", default="edgeagent/{device_id}")
    p.add_argument("--interval", type=float, default=1.0, help="refresh seconds (default 1)")
    p.add_argument("--count", type=int, default=0, help="stop after N refreshes (0 = until Ctrl-C)")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    p.set_defaults(func=cmd_top)


def sparkline(values: list[float], width: int = 30) -> str:
    vals = [v for v in values if v is not None][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1)))] for v in vals)


def _f(v: Any, nd: int = 1, unit: str = "") -> str:
    return "-" if v is None else f"{v:.{nd}f}{unit}"


class TopView:
    """What top knows about the device; fed by telemetry, status and events."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.telemetry: dict = {}
        self.model: dict = {}
        self.state = "unknown"
        self.update: dict | None = None
        self.trial: dict | None = None
        self.events: collections.deque = collections.deque(maxlen=8)
        self.p50_history: collections.deque = collections.deque(maxlen=60)
        self.output: dict | None = None  # the latest output summary (P/output)
        self._last_seq = None

    def on_telemetry(self, t: dict | None) -> None:
        if not t or t.get("seq") == self._last_seq:
            return
        self._last_seq = t.get("seq")
        self.telemetry = t
        self.model = t.get("model") or self.model
        self.p50_history.append(((t.get("inference") or {}).get("latency_ms") or {}).get("p50"))

    def on_status(self, st: dict) -> None:
        self.state = st.get("daemon") or st.get("state") or self.state
        if st.get("model"):
            self.model = {**self.model, **st["model"]}
        self.update = st.get("update")
        self.trial = st.get("trial")
        if st.get("output"):
            self.on_output(st["output"])
        self.on_telemetry(st.get("telemetry"))

    def on_output(self, msg: dict) -> None:
        self.output = msg

    def on_event(self, ev: dict) -> None:
        if ev.get("event") in ("update.downloading",):
            self.update = {"phase": "download", "percent": ev.get("percent")}
        elif ev.get("event") in ("update.trial", "update.rejected", "update.committed", "update.rolled_back"):
            self.update = None
        if not self.events or self.events[-1] is not ev:
            self.events.append(ev)

    # -- rendering ---------------------------------------------------------------------------
    def lines(self) -> list[str]:
        t = self.telemetry
        inf = t.get("inference") or {}
        lat = inf.get("latency_ms") or {}
        m = self.model
        out = [
            f"{self.device}  {self.state}  model {m.get('name', '-')} v{m.get('version', '-')} "
            f"slot {m.get('slot', '-')}{'  TRIAL' if m.get('trial') or self.trial else ''}",
            f"fps {_f(inf.get('fps'))}  inferences {inf.get('count', '-')}  errors {inf.get('errors', '-')}  "
            f"deadline misses {inf.get('deadline_misses', '-')}",
            f"latency ms  p50 {_f(lat.get('p50'), 2)}  p95 {_f(lat.get('p95'), 2)}  p99 {_f(lat.get('p99'), 2)}  "
            f"max {_f(lat.get('max'), 2)}   {sparkline(list(self.p50_history))}",
        ]
        for stage in ("preprocess", "invoke", "postprocess"):
            s = lat.get(stage) or {}
            out.append(f"  {stage:<11} p50 {_f(s.get('p50'), 3)}  p99 {_f(s.get('p99'), 3)}")
        power = t.get("power") or {}
        rails = "  ".join(f"{k} {_f(v, 2, ' W')}" for k, v in (power.get("rails") or {}).items())
        watts = _f(power.get("total_w"), 2, " W") if power.get("total_w") is not None else \
            (f"agent ~{_f(power.get('agent_w'), 2, ' W')}" if power.get("agent_w") is not None else _f(None))
        out.append(f"power {watts} ({power.get('source', 'n/a')})  {rails}  "
                   f"energy/inference {_f(t.get('energy_per_inference_mj'), 2, ' mJ')}")
        thermal = "  ".join(f"{k} {_f(v, 1, '°C')}" for k, v in (t.get("thermal") or {}).items()) or "n/a"
        out.append(f"thermal {thermal}")
        thr = t.get("throttled")
        if thr:
            out.append(f"throttled now: {', '.join(thr.get('now') or []) or 'no'}  since boot: "
                       f"{', '.join(thr.get('since_boot') or []) or 'no'}")
        sysm = t.get("system") or {}
        out.append(f"system cpu {_f(sysm.get('cpu_percent'), 0, '%')} (of all cores)  "
                   f"agent cpu {_f(sysm.get('agent_cpu_percent'), 0, '%')} (of one core)  "
                   f"mem {_f(sysm.get('mem_percent'), 0, '%')}  rss {_f(sysm.get('agent_rss_mb'), 1, ' MB')}  "
                   f"load {_f(sysm.get('load1'), 2)}")
        q = t.get("quality")
        if q:
            psis = "  ".join(f"{m} {_f(q.get(f'psi_{m}'), 3)}" for m in ("class", "confidence", "input"))
            out.append(f"quality ({q.get('reference')}) PSI {psis}  low confidence {_f(q.get('low_confidence_pct'), 1, '%')}"
                       + (f"  DRIFT: {', '.join(q['drift'])}" if q.get("drift") else ""))
        if self.output:
            from edgeagent.cli.output import render

            out.append(f"output {render(self.output)}"[:160])
        if self.update:
            pct = self.update.get("percent")
            bar = ""
            if isinstance(pct, (int, float)):
                n = int(pct / 100 * 30)
                bar = "[" + "#" * n + "." * (30 - n) + f"] {pct:.0f}%"
            out.append(f"update {self.update.get('phase', '')} {bar}")
        out.append("events:")
        for ev in list(self.events)[-6:]:
            ts = time.strftime("%H:%M:%S", time.localtime(ev.get("ts", time.time())))
            detail = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("event", "ts", "manifest", "missing"))
            out.append(f"  {ts} {ev.get('event')} {detail}"[:160])
        return out

    def plain_line(self) -> str:
        t = self.telemetry
        inf = t.get("inference") or {}
        lat = inf.get("latency_ms") or {}
        power = t.get("power") or {}
        m = self.model
        best = ((self.output or {}).get("outputs") or [{}])[0].get("top") or []
        top = f" top {best[0].get('label', '#' + str(best[0]['index']))} {best[0]['score']:.3f}" if best else ""
        return (f"{time.strftime('%H:%M:%S')} {self.device} {m.get('name', '-')} v{m.get('version', '-')} "
                f"slot {m.get('slot', '-')} fps {_f(inf.get('fps'))} p50 {_f(lat.get('p50'), 2)} ms "
                f"p99 {_f(lat.get('p99'), 2)} ms power {_f(power.get('total_w'), 2, ' W')}{top}")

    def renderable(self) -> Any:
        from rich.panel import Panel
        from rich.text import Text

        return Panel(Text("\n".join(self.lines())), title=f"edgeagent top — {self.device}", border_style="cyan")


# -- feeds ------------------------------------------------------------------------------------
def _local_feed(cfg: Any, view: TopView, interval: float) -> Iterator[None]:
    from edgeagent.control.client import ControlClient

    evq: queue.Queue = queue.Queue()

    def follow() -> None:
        try:
            with ControlClient(cfg.control.socket, timeout=None) as c:
                for ev in c.events():
                    evq.put(ev)
        except Exception:  # noqa: BLE001 - the view goes on with polling
            pass

    threading.Thread(target=follow, daemon=True).start()
    with ControlClient(cfg.control.socket, timeout=10) as c:
        while True:
            view.on_status(c.call("status"))
            while not evq.empty():
                view.on_event(evq.get())
            yield
            time.sleep(interval)


def _mqtt_feed(args: argparse.Namespace, view: TopView) -> Iterator[None]:
    from edgeagent.errors import TransportError
    from edgeagent.cli.common import connect
    from edgeagent.transport.client import split_broker

    prefix = args.topic_prefix.replace("{device_id}", args.device).rstrip("/")
    host, port = split_broker(args.mqtt)
    c = connect(args, args.mqtt, "edgeagent-top")
    inbox = c.inbox
    for t, q in ((f"{prefix}/status", 1), (f"{prefix}/telemetry", 0), (f"{prefix}/events", 1), (f"{prefix}/output", 0)):
        c.subscribe(t, q)
    lost_at: float | None = None
    try:
        while True:
            if not c.connected:  # paho reconnects by itself; give up with one line after a while
                lost_at = lost_at or time.monotonic()
                if time.monotonic() - lost_at > 30:
                    raise TransportError("mqtt.disconnected", f"{host}:{port}: lost the broker for 30 s")
            else:
                lost_at = None
            deadline = time.monotonic() + args.interval
            while time.monotonic() < deadline:
                try:
                    msg = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                try:
                    body = json.loads(msg.payload)
                except (ValueError, RecursionError):
                    continue
                if msg.topic.endswith("/telemetry"):
                    view.on_telemetry(body)
                elif msg.topic.endswith("/status"):
                    view.on_status({"state": body.get("state"), "model": body.get("model")})
                elif msg.topic.endswith("/output"):
                    view.on_output(body)
                else:
                    view.on_event(body)
            yield
    finally:
        c.close()


class FleetTop:
    """`top --fleet`: the fleet table, refreshed."""

    def __init__(self, args: argparse.Namespace) -> None:
        from edgeagent.fleet.view import FleetView

        self.group = args.group
        self.view = FleetView(args.topic_prefix)

    def lines(self) -> list[str]:
        from edgeagent.fleet.view import table

        rows = self.view.rows(self.group)
        return table(rows) + [f"{len(rows)} device(s), {sum(r['state'] == 'online' for r in rows)} online"]

    def plain_line(self) -> str:
        return "\n".join(self.lines())

    def renderable(self) -> Any:
        from rich.text import Text

        return Text("\n".join(self.lines()))


def _fleet_feed(args: argparse.Namespace, view: "FleetTop") -> Iterator[None]:
    from edgeagent.cli.common import connect
    from edgeagent.cli.fleet import watch

    c = connect(args, args.mqtt, "edgeagent-top")
    try:
        c.subscribe_many(view.view.topics())
        while True:
            watch(c, view.view, args.interval)
            yield
    finally:
        c.close()


def cmd_top(args: argparse.Namespace) -> int:
    if args.fleet:
        if not args.mqtt:
            from edgeagent.errors import CommandError

            raise CommandError("cmd.bad_args", "--fleet needs --mqtt HOST[:PORT]")
        view = FleetTop(args)
        feed = _fleet_feed(args, view)
    elif args.mqtt:
        if not args.device:
            from edgeagent.errors import CommandError

            raise CommandError("cmd.bad_args", "--mqtt needs --device")
        view = TopView(args.device)
        feed = _mqtt_feed(args, view)
    else:
        cfg = load_config(args)
        view = TopView(cfg.device_id)
        feed = _local_feed(cfg, view, args.interval)
    live = sys.stdout.isatty() and not args.plain
    n = 0
    try:
        if live:
            from rich.live import Live

            with Live(view.renderable(), refresh_per_second=4, screen=False) as lv, _QuitKey() as quit_key:
                for _ in feed:
                    lv.update(view.renderable())
                    n += 1
                    if (args.count and n >= args.count) or quit_key.pressed.is_set():
                        break
        else:
            for _ in feed:
                print(view.plain_line(), flush=True)
                n += 1
                if args.count and n >= args.count:
                    break
    except KeyboardInterrupt:
        pass
    return 0


class _QuitKey:
    """`q` (or Esc) quits the live view: the terminal in cbreak mode while it runs, a thread
    watching stdin, the terminal restored on the way out whatever happens."""

    def __init__(self) -> None:
        import threading

        self.pressed = threading.Event()
        self._saved = None

    def __enter__(self) -> "_QuitKey":
        import threading

        try:
            import termios
            import tty

            self._fd = sys.stdin.fileno()
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        except (ImportError, OSError, ValueError, AttributeError):
            return self  # no terminal on stdin: Ctrl-C still quits
        threading.Thread(target=self._watch, name="top-keys", daemon=True).start()
        return self

    def _watch(self) -> None:
        import os
        import select

        while not self.pressed.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.2)
                if ready and os.read(self._fd, 1) in (b"q", b"Q", b"\x1b"):
                    self.pressed.set()
            except OSError:
                return

    def __exit__(self, *exc: object) -> None:
        self.pressed.set()
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
