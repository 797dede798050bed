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


def _seconds(item) -> float:
    mark = item.get_closest_marker("long")
    return float(mark.kwargs.get("seconds", 15)) if mark else 0.0


def pytest_collection_modifyitems(items: list) -> None:
    """The files that take longest first (their `long(seconds=...)`): with pytest-xdist the
    workers then end at about the same time instead of one worker starting a 90 s test when the
    others are done. The order within a file, and of the unmarked files, is kept."""
    weight: dict[str, float] = {}
    for item in items:
        weight[item.path] = max(weight.get(item.path, 0.0), _seconds(item))
    items.sort(key=lambda item: -weight[item.path])  # stable


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with the heaviest files first (tests/support/schedule.py)."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from tests.support.schedule import HeaviestFirst

    return HeaviestFirst(config, log)


def pytest_terminal_summary(terminalreporter) -> None:
    """Lines a test records as `terminal_summary` (the power-cut counts) in `make test`'s output,
    even with -q and from a pytest-xdist worker (user properties travel with the report)."""
    for rep in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for key, value in getattr(rep, "user_properties", []):
            if key == "terminal_summary" and getattr(rep, "when", "call") == "call":
                terminalreporter.write_line(str(value))
