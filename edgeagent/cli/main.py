"""`edgeagent [-c CONFIG] COMMAND`: each command group registers its own subcommands.

Exit codes: 0 ok, 1 operation refused or failed, 2 usage or config error. Errors are one line on
stderr (`edgeagent: CODE: message`), never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
from typing import Any

from edgeagent import __version__
from edgeagent.errors import EdgeAgentError

# The module under edgeagent.cli that registers each command (register(subparsers)): a command
# line imports only its own (`run` does not pay for the rollout controller's imports at every
# start). tests/core/test_cli_table.py holds this table to what each module's register() adds.
COMMANDS = {"run": "daemon", "status": "daemon", "bench": "daemon",
            **dict.fromkeys(("slots", "rollback", "commit", "switch", "reset", "install"), "slots"),
            "clock": "clock", "output": "output", "samples": "samples",
            **dict.fromkeys(("keygen", "release", "verify"), "publisher"),
            "top": "top", "push": "push", "fleet": "fleet", "rollout": "rollout"}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))  # in the order `edgeagent --help` lists them


def _columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (see _Formatter)."""
    try:
        cols = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        cols = 0
    if cols <= 0:
        try:
            cols = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            cols = 0
    return cols or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's own, given the width it would read. argparse builds a formatter for every
    add_argument, and left to itself it imports shutil for the terminal width; shutil imports
    bz2, lzma and zlib, three shared libraries that no command line needs (4.7 M instructions)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: usage error: {message}\n")


def command_of(argv: list[str]) -> str | None:
    """The command word of a command line (after the global options), or None (--help, a typo)."""
    it = iter(argv)
    for a in it:
        if a in ("-c", "--config"):
            next(it, None)
        elif not a.startswith("-"):
            return a if a in COMMANDS else None
        elif not a.startswith("--config="):
            return None  # -h, --version, or an option argparse should refuse with the full list
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for this command line: only its command's module when argv names one."""
    p = _Parser(prog="edgeagent", description="Run, monitor and update ML models on an edge device.")
    p.add_argument("-c", "--config", help="config file (default $EDGEAGENT_CONFIG or /etc/edgeagent/config.toml)")
    p.add_argument("--version", action="version", version=f"edgeagent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    command = command_of(argv) if argv is not None else None
    for name in (COMMANDS[command],) if command else COMMAND_MODULES:
        importlib.import_module(f"edgeagent.cli.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the process's own command line (the console script, python -m edgeagent)
        # Start-up allocates objects that live as long as the process (numpy, the config's
        # classes); the cyclic GC would walk them again and again for nothing: 18 M of the 662 M
        # instructions to READY=1. Off while the command line is parsed and its module imported;
        # `run` turns it back on once the model serves (service/agent.py), the others now.
        gc.disable()
        argv = sys.argv[1:]
    # One OpenBLAS thread unless the unit says otherwise, set before anything imports numpy: our
    # numpy work is elementwise on small arrays, and a pool of BLAS threads only spins on the
    # cores the interpreter needs (0.1 s of CPU at every start here, inherited by the health child).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser(argv).parse_args(argv)
    if args.command != "run":
        gc.enable()
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
