"""`slots`, `rollback`, `commit` and `install`: live through the control socket when the daemon
runs, offline on the state directory (under its lock) when it does not."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgeagent.cli.common import add_json, emit_json, human_size, load_config
from edgeagent.control.client import ControlClient, DaemonNotRunning
from edgeagent.errors import CommandError, EdgeAgentError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slots", help="the A/B slots: role, status, model, version, sha256, health")
    add_json(p)
    p.set_defaults(func=cmd_slots)

    p = sub.add_parser("rollback", help="make the other slot active (live when the daemon runs)")
    p.add_argument("--reason", default="manual rollback")
    p.add_argument("--leave", type=_ref, help="only if this model (version or sha256) is serving: a repeat does nothing")
    p.add_argument("--to", type=_ref, help="only back to this model (version or sha256); nothing if it already serves")
    add_json(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("commit", help="mark the model on trial good now")
    add_json(p)
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser("switch", help="switch to the staged update now, whatever the switch window")
    add_json(p)
    p.set_defaults(func=cmd_switch)

    p = sub.add_parser("reset", help="clear the slots and trial state (daemon stopped); the next start seeds "
                                     "model.initial; keeps the anti-rollback versions")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.add_argument("--forget-versions", action="store_true",
                   help="also forget the anti-rollback high-water marks (an older version may then be installed)")
    add_json(p)
    p.set_defaults(func=cmd_reset)

    p = sub.add_parser("install", help="install an update bundle (same path as an MQTT update)")
    p.add_argument("manifest", help="signed manifest (.json)")
    p.add_argument("--payload", help="payload file or URL (default: the manifest's payload name beside it)")
    p.add_argument("--wait", action="store_true", help="with a daemon: wait for the commit or rollback")
    add_json(p)
    p.set_defaults(func=cmd_install)


def _ref(v: str) -> int | str:
    return int(v) if v.isdigit() else v


def _live(cfg: Any, op: str, args: dict | None = None, **kw: Any) -> Any:
    with ControlClient(cfg.control.socket, timeout=kw.pop("timeout", 30.0)) as c:
        return c.call(op, args or {}, **kw)


def _store(cfg: Any):
    from edgeagent.state.store import SlotStore

    return SlotStore(cfg.state_dir)


# -- slots ------------------------------------------------------------------------------------
def _health_text(h: Any) -> str:
    if not h:
        return "-"
    if h.get("ok"):
        lat = h.get("latency_ms")
        return f"ok {lat:.3f} ms" if isinstance(lat, (int, float)) else "ok"
    return h.get("code") or "failed"


def render_slots(table: dict) -> str:
    rows = [("SLOT", "ROLE", "STATUS", "MODEL", "VERSION", "SHA256", "SIZE", "LABELS", "INSTALLED", "HEALTH")]
    for s in table["slots"]:
        rows.append((
            s["slot"], s["role"], s["status"], s.get("model") or "-",
            str(s["version"]) if s.get("version") is not None else "-",
            (s.get("sha256") or "-")[:12], human_size(s.get("size")) if s.get("size") else "-",
            str(s["labels"]) if s.get("labels") is not None else "-",
            s.get("installed_at") or "-", _health_text(s.get("health")),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for s in table["slots"]:
        if s.get("reason") and s["status"] == "bad":
            lines.append(f"slot {s['slot']} is bad: {s['reason']}")
    staged = table.get("staged")
    if staged:
        lines.append(f"slot {staged['slot']} is staged: v{staged.get('version')} switches at {staged.get('switch_at')}"
                     + (f" (not before {staged['not_before']})" if staged.get("not_before") else "")
                     + "; `edgeagent switch` switches it now")
    return "\n".join(lines)


def cmd_slots(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    table, _ = _live_or_offline(cfg, "slots", {}, lambda: _store(cfg).slots_table())
    if args.json:
        emit_json(table)
    else:
        print(render_slots(table))
    return 0


# -- rollback / commit ------------------------------------------------------------------------
def _offline_rollback(cfg: Any, reason: str, leave: Any = None, to: Any = None) -> dict:
    """The same target as the daemon's rollback (state.rules.rollback_target through the store),
    the same conditions (leave, to), and the same pre-check: the target's model loads before
    state changes."""
    from edgeagent.engine.model import Model
    from edgeagent.state import rules

    store = _store(cfg)
    st = store.state()
    if st is not None and (leave is not None or to is not None):
        why = rules.rollback_needed(st, leave=leave, to=to)
        if why is not None:
            return {"slot": st.active, "version": st.slots[st.active].version, "rolled_back": False, "note": why}
    to_slot = store.rollback_target()
    if to is not None and not rules.matches(store.state().slots[to_slot], to):
        raise EdgeAgentError("state.no_rollback_target",
                             f"slot {to_slot} holds v{store.state().slots[to_slot].version}, not {to}")
    m = cfg.model
    Model.load(str(store.slot_path(to_slot)), backend=m.backend, num_threads=m.num_threads, delegate=m.delegate).close()
    before = store.state()
    frm = before.active
    st = store.rollback(reason, mark_bad=False)
    return {"slot": st.active, "version": st.slots[st.active].version, "from": frm,
            "from_version": before.slots[frm].version if before.slots.get(frm) else None, "rolled_back": True}


def _live_or_offline(cfg: Any, op: str, args: dict, offline: Any) -> tuple[dict, str]:
    """The daemon does it when it runs; otherwise `offline()` does it on the state directory."""
    try:
        return _live(cfg, op, args), "live"
    except DaemonNotRunning:
        return offline(), "offline"


def _print_result(args: argparse.Namespace, r: dict, mode: str, text: str) -> int:
    if args.json:
        emit_json({**r, "mode": mode})
    else:
        print(text)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    cond = {k: v for k, v in (("leave", args.leave), ("to", args.to)) if v is not None}
    r, mode = _live_or_offline(cfg, "rollback", {"reason": args.reason, **cond},
                               lambda: _offline_rollback(cfg, args.reason + " (offline)", **cond))
    if r.get("rolled_back") is False:
        return _print_result(args, r, mode, f"nothing to roll back ({mode}): {r.get('note')}")
    return _print_result(args, r, mode, f"rolled back ({mode}): slot {r['slot']} v{r['version']} is active")


def _offline_commit(cfg: Any) -> dict:
    st = _store(cfg).commit()
    return {"slot": st.active, "version": st.slots[st.active].version, "status": "good"}


def cmd_commit(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    r, mode = _live_or_offline(cfg, "commit", {}, lambda: _offline_commit(cfg))
    return _print_result(args, r, mode, f"committed ({mode}): slot {r['slot']} v{r['version']} is good")


def _offline_switch(cfg: Any) -> dict:
    """The staged slot begins its trial at the next start (the daemon measures `before` then)."""
    from edgeagent.state import rules
    from edgeagent.state.rules import TrialTerms

    store = _store(cfg)
    st = store.state()
    rec = st.staged if st else None
    if rec is None:
        raise EdgeAgentError("state.nothing_staged", "no update is staged")
    if not store.verify_slot(rec["slot"]):
        raise EdgeAgentError("state.slot_damaged", f"slot {rec['slot']} no longer holds the staged v{rec['version']}")
    st = store.transition(lambda s: rules.begin_trial(s, rec["slot"], TrialTerms(**{**rec["terms"], "before": None})))
    return {"version": rec["version"], "slot": rec["slot"], "state": "trial", "probation_s": st.trial["probation_s"]}


def cmd_switch(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    r, mode = _live_or_offline(cfg, "switch", {}, lambda: _offline_switch(cfg))
    return _print_result(args, r, mode, f"switched ({mode}): v{r['version']} in slot {r['slot']} is on trial "
                                        f"({r.get('probation_s')} s probation)")


# -- reset ------------------------------------------------------------------------------------
def cmd_reset(args: argparse.Namespace) -> int:
    from edgeagent.state.lock import DaemonLock

    cfg = load_config(args)
    try:
        with ControlClient(cfg.control.socket, timeout=5.0):
            raise EdgeAgentError("reset.daemon_running", "the daemon is running: stop it first "
                                                         "(systemctl stop edgeagent)")
    except DaemonNotRunning:
        pass
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("cmd.bad_args", "reset clears the model slots: confirm with --yes")
        answer = input(f"clear the model slots and trial state in {cfg.state_dir}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandError("cmd.cancelled", "nothing was changed")
    lock = DaemonLock(cfg.state_dir)
    lock.acquire()  # state.in_use when a daemon serves this directory with another socket
    try:
        r = _store(cfg).reset(forget_versions=args.forget_versions)
    finally:
        lock.release()
    if args.json:
        emit_json({"reset": True, **r})
    else:
        kept = ", ".join(f"{k} v{v}" for k, v in r["high_water"].items()) or "none"
        print(f"reset {cfg.state_dir}: the next start seeds {cfg.model.initial or 'model.initial'}; "
              f"anti-rollback versions kept: {kept}")
    return 0


# -- install ----------------------------------------------------------------------------------
class _Progress:
    """A progress bar on a terminal (rich), nothing in a pipe."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                                TimeElapsedColumn(), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("check", total=100)

    def update(self, phase: str, percent: float | None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=phase, completed=percent if percent is not None else 0)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _payload_arg(manifest_path: Path, envelope: dict, payload: str | None) -> str:
    if payload is None:
        name = ((envelope.get("signed") or {}).get("payload") or {}).get("name")
        if not isinstance(name, str):
            raise CommandError("cmd.bad_args", f"{manifest_path}: no payload name; give --payload")
        payload = str(manifest_path.parent / name)
    if "://" in payload:
        return payload
    p = Path(payload).resolve()
    if not p.is_file():
        raise CommandError("cmd.bad_args", f"{payload}: no such payload file")
    return p.as_uri()


def cmd_install(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    mpath = Path(args.manifest)
    try:
        envelope = json.loads(mpath.read_text())
    except OSError as e:
        raise CommandError("cmd.bad_args", f"{mpath}: {e.strerror}") from None
    except ValueError as e:
        raise EdgeAgentError("update.malformed", f"{mpath}: not JSON ({e})") from None
    url = _payload_arg(mpath, envelope, args.payload)
    bar = _Progress(sys.stderr.isatty() and not args.json)
    try:
        try:
            result = _install_live(cfg, envelope, url, bar, args.wait)
            mode = "live"
        except DaemonNotRunning:
            result = _install_offline(cfg, envelope, url, bar)
            mode = "offline"
    finally:
        bar.close()
    if args.json:
        emit_json({**result, "mode": mode})
    elif mode == "live":
        print(f"v{result['version']} is serving from slot {result['slot']}: {result.get('state', 'trial')}")
    else:
        print(f"v{result['version']} installed in slot {result['slot']} and left in trial: "
              "the next daemon start serves it and confirms it after probation")
    return 0


def _install_live(cfg: Any, envelope: dict, url: str, bar: _Progress, wait: bool) -> dict:
    def on_event(ev: dict) -> None:
        name = ev.get("event", "")
        if name == "update.downloading":
            bar.update("download", ev.get("percent"))
        elif name in ("update.verified", "update.applied", "update.trial"):
            bar.update(name.split(".")[1], 100.0)
            bar.note(f"{name} v{ev.get('version')}")
        outcome.append(ev)

    outcome: list[dict] = []
    with ControlClient(cfg.control.socket, timeout=cfg.update.health_timeout_s + 600) as c:
        c.call("events.subscribe")
        result = c.call("update", {"manifest": envelope, "payload_url": url}, on_event=on_event)
        if wait:
            deadline = time.monotonic() + result.get("probation_s", cfg.update.probation_s) + 120
            while time.monotonic() < deadline:
                done = [e for e in outcome if e.get("event") in ("update.committed", "update.rolled_back")]
                if done:
                    result["state"] = "committed" if done[-1]["event"] == "update.committed" else \
                        f"rolled back: {done[-1].get('reason')}"
                    if done[-1]["event"] == "update.rolled_back":
                        raise EdgeAgentError("update.rolled_back", done[-1].get("reason", ""))
                    break
                try:
                    msg = c._readline(1.0)
                except OSError:
                    continue
                if "event" in msg:
                    on_event(msg)
    return result


def _install_offline(cfg: Any, envelope: dict, url: str, bar: _Progress) -> dict:
    from edgeagent.update.installer import Installer
    from edgeagent.update.probation import terms_for
    from edgeagent.update.source import PayloadSource

    store = _store(cfg)
    m = cfg.model
    if store.state() is None:  # factory provisioning: seed slot A first, like a first start
        store.boot(model_name=m.name, initial=m.initial, initial_version=m.initial_version,
                   max_attempts=cfg.update.max_trial_attempts)

    def emit(name: str, **fields: Any) -> None:
        bar.note(f"{name} v{fields.get('version', '')}")
        if name == "update.downloading":
            bar.update("download", fields.get("percent"))

    def progress(p: dict) -> None:
        bar.update(p.get("phase", ""), p.get("percent"))

    inst = Installer(cfg, store, emit=emit, progress=progress)
    m = inst.check(envelope)
    done = inst.run(m, PayloadSource(url=url), frames=[])
    # the same trial record as the live switch (terms_for); `before` is measured at the next start
    store.begin_trial(done.slot, terms_for(m, cfg.update, expected_ms=done.health.get("latency_ms"), before=None))
    return {"version": m.version, "slot": done.slot, "state": "trial", "health": done.health}
