"""`edgeagent samples list|get|clear`: the input samples the quality monitor kept (opt-in,
`[monitor] capture`), through the control socket."""

from __future__ import annotations

import argparse
import base64
import sys
import time
from pathlib import Path

from edgeagent.cli.common import add_json, emit_json, human_size, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("samples", help="input samples kept for retraining ([monitor] capture): list, get, clear")
    ssub = p.add_subparsers(dest="samples_cmd", metavar="ACTION")
    ssub.required = True
    s = ssub.add_parser("list", help="the samples kept, oldest first")
    add_json(s)
    s.set_defaults(func=cmd_list)
    g = ssub.add_parser("get", help="write one sample's input to a file (and print its record)")
    g.add_argument("id")
    g.add_argument("--out", help="file to write (default: ID.png/.csv/.npy in the current folder)")
    g.set_defaults(func=cmd_get)
    c = ssub.add_parser("clear", help="delete every sample kept")
    c.set_defaults(func=cmd_clear)


def _call(args: argparse.Namespace, op: str, cmd_args: dict | None = None) -> dict:
    from edgeagent.control.client import ControlClient

    with ControlClient(load_config(args).control.socket) as c:
        return c.call(op, cmd_args or {})


def cmd_list(args: argparse.Namespace) -> int:
    r = _call(args, "samples.list")
    if args.json:
        emit_json(r)
        return 0
    for s in r["samples"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.get("ts", 0)))
        label = f" {s['label']}" if s.get("label") else ""
        print(f"{s['id']}  {when}  v{s.get('model')}  {s.get('reason')}  class {s.get('argmax')}{label} "
              f"{s.get('confidence')}  {s['kind']} {human_size(s.get('bytes'))}")
    print(f"{len(r['samples'])} samples, {human_size(r['bytes'])} of {human_size(r['max_bytes'])}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    r = _call(args, "samples.get", {"id": args.id})
    out = Path(args.out or f"{args.id}.{r['meta']['kind']}")
    out.write_bytes(base64.b64decode(r["data_b64"]))
    print(f"wrote {out} ({r['meta'].get('reason')}, class {r['meta'].get('argmax')}, "
          f"confidence {r['meta'].get('confidence')})", file=sys.stderr)
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    print(f"cleared {_call(args, 'samples.clear')['cleared']} samples")
    return 0
