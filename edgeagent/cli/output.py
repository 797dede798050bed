"""`edgeagent output [--follow]`: what the model says, through the control socket, no broker needed.

A line per output summary (the same payload as `P/output`): the model version and, for a
classifier's output 0, the top-k classes with their labels; `--json` prints the payloads.
"""

from __future__ import annotations

import argparse
import json
import time

from edgeagent.cli.common import load_config
from edgeagent.errors import CommandError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("output", help="the model's latest outputs (top-k with labels); --follow streams them")
    p.add_argument("--follow", "-f", action="store_true", help="print every summary as it comes, until Ctrl-C")
    p.add_argument("--count", type=int, default=0, help="with --follow: stop after N summaries")
    p.add_argument("--json", action="store_true", help="the P/output payloads, one per line")
    p.set_defaults(func=cmd_output)


def render(msg: dict) -> str:
    """One line: `v2 12:00:01 cat 0.912, dog 0.051` (top-k), else argmax/max of each output."""
    when = time.strftime("%H:%M:%S", time.localtime(msg.get("ts") or 0))
    parts = []
    for o in msg.get("outputs", []):
        if o.get("top"):
            parts.append(", ".join(f"{t.get('label', '#' + str(t['index']))} {t['score']:.3f}" for t in o["top"]))
        elif "argmax" in o:
            parts.append(f"{o['name']}: argmax {o['argmax']} max {o['max']:.3f}")
    return f"v{msg.get('model')} {when} " + " | ".join(parts)


def cmd_output(args: argparse.Namespace) -> int:
    from edgeagent.control.client import ControlClient

    cfg = load_config(args)
    n = 0
    with ControlClient(cfg.control.socket) as c:
        for msg in c.outputs(timeout=None if args.follow else 5.0):
            print(json.dumps(msg) if args.json else render(msg), flush=True)
            n += 1
            if not args.follow or (args.count and n >= args.count):
                return 0
    if n == 0:
        raise CommandError("output.none", "no output summary within 5 s (is the model serving frames?)")
    return 0
