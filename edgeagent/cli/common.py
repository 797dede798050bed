"""Helpers shared by the CLI commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgeagent import config as config_mod
from edgeagent.config import Config


def load_config(args: argparse.Namespace) -> Config:
    return config_mod.load(getattr(args, "config", None))


def add_broker_options(p: argparse.ArgumentParser, *, flag: str = "--broker", required: bool = False) -> None:
    """The broker options every publisher-side command takes (push, top --fleet, fleet, rollout)."""
    p.add_argument(flag, required=required, default=None if required else "localhost",
                   metavar="HOST[:PORT]", help="the broker (default localhost:1883)" if not required else "the broker")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    p.add_argument("--tls-ca"), p.add_argument("--tls-cert"), p.add_argument("--tls-key")
    p.add_argument("--username"), p.add_argument("--password-file")


def connect(args: argparse.Namespace, spec: str, client_prefix: str) -> Any:
    """One MqttClient from the shared broker options."""
    from edgeagent.transport.client import MqttClient, split_broker

    host, port = split_broker(spec)
    return MqttClient(host, port, protocol=getattr(args, "protocol", "5"), client_prefix=client_prefix,
                      tls_ca=getattr(args, "tls_ca", None), tls_cert=getattr(args, "tls_cert", None),
                      tls_key=getattr(args, "tls_key", None), username=getattr(args, "username", None),
                      password_file=getattr(args, "password_file", None))


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
