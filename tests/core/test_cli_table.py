"""The CLI's command table: a command line imports only the module that registers its command."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from edgeagent.cli.main import COMMAND_MODULES, COMMANDS, command_of
from tests.support.daemon import REPO


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_the_table_names_every_command_its_module_registers(module):
    sub = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(f"edgeagent.cli.{module}").register(sub)
    assert set(sub.choices) == {c for c, m in COMMANDS.items() if m == module}


def test_the_command_word_after_the_global_options():
    assert command_of(["-c", "x.toml", "run"]) == "run"
    assert command_of(["--config=x.toml", "rollout", "start"]) == "rollout"
    assert command_of(["--config", "x.toml", "status", "--json"]) == "status"
    for argv in ([], ["--help"], ["--version"], ["-c", "x.toml"], ["stauts"], ["-x", "run"]):
        assert command_of(argv) is None, argv


def test_run_does_not_import_the_fleet_or_update_tooling_and_help_still_lists_everything():
    probe = ("import sys; from edgeagent.cli.main import build_parser; build_parser(['-c', 'x', 'run'])"
             ".parse_args(['-c', 'x', 'run']); print(' '.join(sorted(m for m in sys.modules "
             "if m.startswith(('edgeagent.fleet', 'edgeagent.update', 'edgeagent.transport')))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", out.stdout
    r = subprocess.run([sys.executable, "-m", "edgeagent", "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and all(c in r.stdout for c in COMMANDS), r.stdout
    r = subprocess.run([sys.executable, "-m", "edgeagent", "stauts"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "invalid choice: 'stauts'" in r.stderr and "rollout" in r.stderr, r.stderr
