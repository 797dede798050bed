"""Fixtures shared by every test directory: generated models and the real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.daemon import Daemon, base_config


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    """A small float dense model the real interpreter runs (input 1x16, 4 outputs)."""
    from edgeagent.engine import testmodels

    return testmodels.write_model(tmp_path / "model-v1.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1)


@pytest.fixture
def start_daemon(tmp_path: Path, model_path: Path):
    """start_daemon(**config_overrides) -> a running Daemon; all are stopped at teardown."""
    started: list[Daemon] = []

    def start(wait_ready: bool = True, env: dict | None = None, name: str = "daemon", **over) -> Daemon:
        d = Daemon(tmp_path, base_config(tmp_path, over.pop("model_file", model_path), **over), name=name)
        started.append(d)
        return d.start(wait_ready=wait_ready, env=env)

    yield start
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


@pytest.fixture(scope="session")
def test_delegate(tmp_path_factory) -> Path:
    """A real TFLite external delegate library, built at test time (tests/support/delegate)."""
    from tests.support.delegate import build

    return build(tmp_path_factory.mktemp("delegate"))


POWERCUT_SUMMARY: list[str] = []  # filled by tests/hardening/test_powercut.py


def pytest_terminal_summary(terminalreporter) -> None:
    """The power-cut test's counts, in `make test`'s output even with -q."""
    for line in POWERCUT_SUMMARY:
        terminalreporter.write_line(line)
