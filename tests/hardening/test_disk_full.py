"""A full disk is survivable (issue 19, point 2): on an 8 MB ext4 that fills up while a model that
turns NaN is on trial, the verdict still takes it off the loop (in memory; state.json cannot be
written), commands answer with codes, a restart on the still-full disk serves the good model
read-only and says so, and the end of the crash window does not end the daemon."""

from __future__ import annotations

import json
import time

import pytest

from edgeagent.engine import testmodels
from edgeagent.update.keys import generate_keypair
from edgeagent.update.release import make_release
from tests.e2e.test_update import cli
from tests.support.daemon import Daemon, base_config
from tests.support.loopfs import Mounted, fill, make_image, need_root_and_loop

pytestmark = pytest.mark.long(seconds=20)


def _wait(fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_a_full_disk_does_not_keep_a_failing_model_or_end_the_daemon(tmp_path):
    need_root_and_loop()
    disk = Mounted(make_image(tmp_path / "small.img", 8), tmp_path / "m")
    d = None
    try:
        generate_keypair(tmp_path / "k")
        v1 = testmodels.write_model(tmp_path / "v1.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1)
        v2 = testmodels.write_model(tmp_path / "v2.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1,
                                    version_tag=2, nan_after=100)
        rel = make_release(keys=[str(tmp_path / "k" / "edgeagent.key")], target=v2, base=v1, model="testmodel",
                           version=2, out_dir=tmp_path / "rel")
        cfg = base_config(tmp_path, v1, update={"trusted_keys": [str(tmp_path / "k" / "edgeagent.pub")],
                                                "probation_s": 30.0, "min_inferences": 100000,
                                                "crash_window_s": 2.0})
        cfg["model"]["state_dir"] = str(disk.where / "state")
        d = Daemon(tmp_path, cfg, name="first").start()
        r = cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"])
        assert r.returncode == 0, r.stderr
        assert d.call("status")["model"]["version"] == 2
        fill(disk.where)  # the disk fills up while v2 is on trial (it turns NaN after 100 frames)

        # the verdict takes v2 off the loop although state.json cannot record it
        _wait(lambda: d.call("status")["model"]["version"] == 1)
        time.sleep(1.0)  # telemetry from after the swap
        errors = d.call("status")["telemetry"]["inference"]["errors"]
        time.sleep(1.5)
        assert d.call("status")["telemetry"]["inference"]["errors"] == errors  # v1 serves, no new NaN
        assert "not written" in d.log_path.read_text()
        assert json.loads((disk.where / "state" / "state.json").read_text())["trial"] is not None  # as on disk
        for op in ("commit", "rollback"):  # commands answer with a code, never cmd.internal
            r = cli(d.config_path, op, "--json")
            out = json.loads(r.stdout)
            assert out.get("ok", True) is True or out["error"]["code"] != "cmd.internal", out
        assert d.stop() == 0

        # a restart on the full disk: the trial's attempt cannot be counted, so the good model serves
        d = Daemon(tmp_path, cfg, name="second").start()
        st = d.call("status")
        assert st["model"]["version"] == 1 and st["model"]["slot"] == "a"
        assert any(e["event"] == "state.read_only" for e in st["events"]), st["events"]
        time.sleep(3.0)  # past crash_window_s: confirming the boot fails on the full disk, quietly
        assert d.proc.poll() is None and d.call("ping")["pong"] is True
        assert d.stop() == 0

        # room again: the next start counts the attempt and the trial of v2 is rolled back as usual
        (disk.where / "filler").unlink()
        d = Daemon(tmp_path, cfg, name="third").start()
        _wait(lambda: d.call("status")["model"]["version"] == 1)
        assert d.call("status")["daemon"] == "running"
    finally:
        if d is not None and d.proc is not None and d.proc.poll() is None:
            d.stop()
        disk.close()
