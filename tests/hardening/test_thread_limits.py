"""A daemon that cannot start a thread (a pids cgroup at its limit) leaves no state behind
(issue 19, point 6): the updater is not left busy, the control socket keeps accepting."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from edgeagent.control.client import ControlClient
from edgeagent.update.keys import generate_keypair
from tests.e2e.test_update import model, release, trusted, update_args

PIDS = Path("/sys/fs/cgroup/pids")


def _pids_cgroup() -> Path:
    if os.geteuid() != 0 or not (PIDS / "cgroup.procs").exists():
        pytest.skip("needs root and the cgroup v1 pids controller at /sys/fs/cgroup/pids (CI has both)")
    cg = PIDS / f"edgeagent-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    return cg


def test_no_thread_to_start_leaves_nothing_busy(tmp_path, start_daemon, model_path):
    generate_keypair(tmp_path / "k1")
    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2), 2, base=model_path)
    d = start_daemon(update={**trusted(tmp_path, "k1"), "probation_s": 0.5, "min_inferences": 5})
    cg = _pids_cgroup()
    try:
        with ControlClient(d.socket_path, timeout=30) as c:
            c.call("ping")  # this connection's thread exists before the limit
            (cg / "cgroup.procs").write_text(str(d.proc.pid))
            # below the count, not at it: a thread that ends meanwhile (the start's status
            # connection) must not leave room for the update's worker, which would then fail
            # later, in the health check's fork (update.io_error, seen once in CI)
            (cg / "pids.max").write_text("1")
            with pytest.raises(Exception) as ei:
                c.call("update", update_args(rel))
            assert getattr(ei.value, "code", "") == "update.no_thread", ei.value
            # a new connection while no thread can start: refused, and the accept loop lives on
            with pytest.raises(Exception) as refused:
                with ControlClient(d.socket_path, timeout=3) as other:
                    other.call("ping")
            assert isinstance(refused.value, OSError) or getattr(refused.value, "code", "") == "control.closed", \
                refused.value
            (cg / "pids.max").write_text("max")
            # the limit lifted: the same update goes through, nothing answers update.busy
            r = c.call("update", update_args(rel), timeout=120)
            assert r["state"] == "trial" and r["version"] == 2
        deadline = time.monotonic() + 30
        while json.loads((tmp_path / "state" / "state.json").read_text())["trial"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.call("status")["model"]["version"] == 2  # a new connection is served again
        assert "control: connection refused: can't start new thread" in d.log()
    finally:
        try:
            (cg / "pids.max").write_text("max")
            for pid in (cg / "cgroup.procs").read_text().split():
                (PIDS / "cgroup.procs").write_text(pid)
        finally:
            cg.rmdir()
