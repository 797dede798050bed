"""`edgeagent [-c CONFIG] COMMAND`: each command group registers its own subcommands.

Exit codes: 0 ok, 1 operation refused or failed, 2 usage or config error. Errors are one line on
stderr (`edgeagent: CODE: message`), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from edgeagent import __version__
from edgeagent.errors import EdgeAgentError

# Modules under edgeagent.cli that provide register(subparsers).
COMMAND_MODULES = ("daemon", "slots", "clock", "output", "samples", "publisher", "top", "push", "fleet", "rollout")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: usage error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgeagent", description="Run, monitor and update ML models on an edge device.")
    p.add_argument("-c", "--config", help="config file (default $EDGEAGENT_CONFIG or /etc/edgeagent/config.toml)")
    p.add_argument("--version", action="version", version=f"edgeagent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"edgeagent.cli.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdgeAgentError as e:
        print(f"edgeagent: {e}", file=sys.stderr)
        if getattr(args, "json", False):  # a script reading stdout gets the error there too
            json.dump({"ok": False, "error": e.to_dict()}, sys.stdout)
            sys.stdout.write("\n")
        return e.exit_code
    except KeyboardInterrupt:
        print("edgeagent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
