"""`edgeagent clock show|reset-floor`: the persisted time floor that update expiry is judged
against when the wall clock is behind it (a device without an RTC).

A floor pushed into the future (a clock that once read 2099) refuses every valid update with
update.clock_unsynced; `reset-floor` puts it back, to the `created` of the last committed
update unless --to names a time. It writes the floor file directly: the daemon reads it at each
check, so this works with the daemon running or not.
"""

from __future__ import annotations

import argparse

from edgeagent.cli.common import add_json, emit_json, load_config
from edgeagent.errors import CommandError
from edgeagent.state.timefloor import TimeFloor, parse_utc, utcnow

_ISO = "%Y-%m-%dT%H:%M:%SZ"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clock", help="the time floor update expiry is judged against (show, reset-floor)")
    csub = p.add_subparsers(dest="clock_cmd", metavar="ACTION")
    csub.required = True
    s = csub.add_parser("show", help="the wall clock, the time floor and the last committed update's created")
    add_json(s)
    s.set_defaults(func=cmd_show)
    r = csub.add_parser("reset-floor", help="put a time floor that is in the future back")
    r.add_argument("--to", help="the new floor, YYYY-MM-DDTHH:MM:SSZ (default: the last committed update's created)")
    add_json(r)
    r.set_defaults(func=cmd_reset)


def _fmt(t) -> str | None:
    return t.strftime(_ISO) if t is not None else None


def _view(tf: TimeFloor) -> dict:
    floor = tf.get()
    now = utcnow()
    return {"now": _fmt(now), "floor": _fmt(floor), "committed_created": _fmt(tf.known()),
            "clock_behind_floor": bool(floor is not None and now < floor)}


def cmd_show(args: argparse.Namespace) -> int:
    v = _view(TimeFloor(load_config(args).state_dir))
    if args.json:
        emit_json(v)
    else:
        print(f"wall clock {v['now']}; time floor {v['floor'] or '-'}"
              f"{' (the clock is behind it: expiry is judged against the floor)' if v['clock_behind_floor'] else ''}; "
              f"last committed update created {v['committed_created'] or '-'}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    tf = TimeFloor(load_config(args).state_dir)
    before = tf.get()
    to = None
    if args.to:
        try:
            to = parse_utc(args.to)
        except ValueError:
            raise CommandError("cmd.bad_args", f"--to {args.to!r}: expected YYYY-MM-DDTHH:MM:SSZ") from None
    after = tf.reset(to)
    v = {**_view(tf), "previous_floor": _fmt(before)}
    if args.json:
        emit_json(v)
    else:
        print(f"time floor {_fmt(before) or '-'} -> {_fmt(after) or 'none'}")
    return 0
