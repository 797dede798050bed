"""`edgeagent fleet`: every device the broker knows, from retained status and recent telemetry.

The status is retained, so every device that ever connected is listed at once (online or not);
telemetry is not, so the command listens for `--listen` seconds (default a little over the
default telemetry interval) for each device's latest figures. `top --fleet` is the live form.
"""

from __future__ import annotations

import argparse
from typing import Any

from edgeagent.cli.common import add_broker_options, add_json, connect, emit_json
from edgeagent.fleet.view import FleetView, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="table of every device on the broker: model, slot, trial, fps, p95, power")
    add_broker_options(p)
    p.add_argument("--group", help="only this group's devices")
    p.add_argument("--listen", type=float, default=6.0, help="seconds to collect telemetry (default 6)")
    p.add_argument("--topic-prefix", default="edgeagent/{device_id}", help="the devices' mqtt.topic_prefix")
    add_json(p)
    p.set_defaults(func=cmd_fleet)


def watch(client: Any, view: FleetView, seconds: float) -> None:
    for m in client.drain(seconds):
        view.ingest(m.topic, m.payload)


def cmd_fleet(args: argparse.Namespace) -> int:
    view = FleetView(args.topic_prefix)
    client = connect(args, args.broker, "edgeagent-fleet")
    try:
        client.subscribe_many(view.topics())
        watch(client, view, max(0.5, args.listen))
    finally:
        client.close()
    rows = view.rows(args.group)
    if args.json:
        emit_json({"devices": rows, "count": len(rows), "online": sum(r["state"] == "online" for r in rows)})
    else:
        for line in table(rows):
            print(line)
        print(f"{len(rows)} device(s), {sum(r['state'] == 'online' for r in rows)} online")
    return 0
