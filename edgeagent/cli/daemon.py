"""`run`, `status` and `bench`."""

from __future__ import annotations

import argparse
import sys

from edgeagent.cli.common import add_json, emit_json, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="agent state, active model, trial, update, last telemetry")
    add_json(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("bench", help="latency of the raw interpreter and of the agent pipeline")
    p.add_argument("model", help=".tflite file")
    p.add_argument("--seconds", type=float, default=10.0, help="total measuring time (default 10)")
    p.add_argument("--threads", type=int, default=0, help="interpreter threads (0 = one per core)")
    p.add_argument("--backend", choices=("auto", "litert", "tflite"), default="auto")
    p.add_argument("--rounds", type=int, default=5, help="raw/agent round pairs (default 5)")
    p.add_argument("--delegate", metavar="LIB", help="an external delegate library (both sides run on it)")
    p.add_argument("--delegate-option", metavar="KEY=VALUE", action="append", default=[],
                   help="an option for the delegate (repeatable), e.g. device=usb")
    add_json(p)
    p.set_defaults(func=cmd_bench)


def cmd_run(args: argparse.Namespace) -> int:
    from edgeagent.service import logs
    from edgeagent.service.agent import run_daemon

    cfg = load_config(args)
    logs.setup(cfg.log.level)
    return run_daemon(cfg)


def offline_status(cfg) -> dict:
    from edgeagent.state.store import SlotStore

    st = SlotStore(cfg.state_dir).state()
    model = None
    if st is not None and st.slots.get(st.active):
        info = st.slots[st.active]
        model = {"name": info.model, "version": info.version, "slot": st.active, "sha256": info.sha256}
    staged = st.staged if st else None
    return {"daemon": "stopped", "model": model, "trial": st.trial if st else None, "update": None,
            "staged": {k: staged.get(k) for k in ("version", "slot", "switch_at", "not_before")} if staged else None}


def cmd_status(args: argparse.Namespace) -> int:
    from edgeagent.control.client import ControlClient, DaemonNotRunning

    cfg = load_config(args)
    try:
        with ControlClient(cfg.control.socket) as c:
            st = c.call("status")
    except DaemonNotRunning:
        st = offline_status(cfg)
    if args.json:
        emit_json({k: st.get(k) for k in ("daemon", "model", "trial", "staged", "update", "telemetry", "output")
                   if k in st})
        return 0
    print(render_status(st))
    return 0


def render_status(st: dict) -> str:
    from edgeagent.telemetry.figures import figures_line

    m = st.get("model") or {}
    lines = [f"daemon:  {st['daemon']}" + ("" if st["daemon"] == "running" else " (showing the state directory)")]
    if m:
        labels = f", {m['labels']} labels" if m.get("labels") else ""
        lines.append(f"model:   {m.get('name')} v{m.get('version')} in slot {m.get('slot')} "
                     f"(sha256 {str(m.get('sha256'))[:12]}{labels})")
    else:
        lines.append("model:   none installed")
    trial = st.get("trial")
    lines.append("trial:   " + (f"slot {trial.get('slot')} on probation (from {trial.get('from')}, attempts {trial.get('attempts')})" if trial else "none"))
    staged = st.get("staged")
    if staged:
        lines.append(f"staged:  v{staged.get('version')} in slot {staged.get('slot')}, switches at "
                     f"{staged.get('switch_at')} (or now: edgeagent switch)")
    up = st.get("update")
    lines.append("update:  " + (f"{up.get('phase')} {up.get('percent', '')}%" if up else "none"))
    if st.get("telemetry"):
        lines.append("figures: " + figures_line(st["telemetry"]))
    q = (st.get("telemetry") or {}).get("quality")
    if q:
        psis = ", ".join(f"{m} {q[f'psi_{m}']:.3f}" for m in ("class", "confidence", "input")
                         if isinstance(q.get(f"psi_{m}"), (int, float)))
        lines.append(f"quality: reference {q.get('reference')}" + (f", PSI {psis}" if psis else "")
                     + (f", DRIFT: {', '.join(q['drift'])}" if q.get("drift") else ""))
    if st.get("output"):
        from edgeagent.cli.output import render

        lines.append("output:  " + render(st["output"]))
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    from edgeagent.runtime.bench import run_bench

    progress = (lambda s: print(s, file=sys.stderr)) if sys.stderr.isatty() and not args.json else None
    opts = dict(o.split("=", 1) for o in args.delegate_option if "=" in o)
    if len(opts) != len(args.delegate_option):
        from edgeagent.errors import CommandError

        raise CommandError("cmd.bad_args", "--delegate-option: expected KEY=VALUE")
    r = run_bench(args.model, seconds=args.seconds, threads=args.threads, backend=args.backend,
                  delegate={"library": args.delegate, "options": opts, "exclusive": False} if args.delegate else None,
                  rounds=args.rounds, progress=progress)
    if args.json:
        emit_json(r)
        return 0
    dlg = r.get("delegate")
    if dlg:
        print(f"delegate {dlg['name']} ({dlg['library']}): {dlg['state']}" + (f" ({dlg['reason']})" if dlg.get("reason") else ""))
    print(f"model {r['model']} ({r['backend']} backend, {r['threads']} threads, {r['rounds']} paired rounds "
          f"in {r['seconds']:.0f} s, at least {min(r['frames_per_round'].values())} frames each)")
    print(f"{'':8}{'fps':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for side in ("raw", "agent"):
        s = r[side]
        lat = s["latency_ms"]
        print(f"{side:8}{s['fps']:>10.1f}{lat['p50']:>10.3f}{lat['p95']:>10.3f}{lat['p99']:>10.3f}")
    o, us = r["overhead"], r["per_frame_us"]
    print(f"overhead {o['median'] * 100:.2f}% of raw throughput (paired rounds: min {o['min'] * 100:.2f}%, "
          f"max {o['max'] * 100:.2f}%); {us['median']:.1f} us per frame (min {us['min']:.1f}, max {us['max']:.1f})")
    return 0
