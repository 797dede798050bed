"""Brown-outs are not crashes (issue 19, point 4): a committed model whose starts are cut by
power losses (the system boots again in between) is not rolled back and banned; the same cuts
without a reboot in between are a crash loop, rolled back as before.

A reboot is what the daemon sees in /proc/sys/kernel/random/boot_id; the test cannot reboot this
machine, so between two cuts it writes another boot id into state.json's `boots` record, which is
exactly the difference a reboot makes to the next start.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
import uuid

import pytest

from edgeagent.update.keys import generate_keypair
from tests.e2e.test_update import cli, model, release, trusted
from tests.support.daemon import Daemon, base_config

pytestmark = pytest.mark.long(seconds=30)


def _cut_starts(tmp_path, cfg, n: int, *, reboot: bool) -> None:
    state = tmp_path / "state" / "state.json"
    for i in range(n):
        d = Daemon(tmp_path, cfg, name=f"cut{'r' if reboot else ''}{i}").start()
        time.sleep(2.0)  # a flaky supply: the power goes 2 s after READY
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d.close()
        if reboot:
            st = json.loads(state.read_text())
            st["boots"]["boot_id"] = str(uuid.uuid4())
            state.write_text(json.dumps(st))


def test_power_cuts_do_not_roll_back_a_committed_model(tmp_path, model_path):
    started: list[Daemon] = []
    try:
        _brownouts(tmp_path, model_path, started)
    finally:
        for d in started:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()


def _brownouts(tmp_path, model_path, started) -> None:
    generate_keypair(tmp_path / "k1")
    cfg = base_config(tmp_path, model_path, update={**trusted(tmp_path, "k1"), "probation_s": 0.5,
                                                    "min_inferences": 5, "max_crash_restarts": 3})
    d = Daemon(tmp_path, cfg, name="install").start()
    started.append(d)
    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2), 2, base=model_path)
    r = cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"], "--wait")
    assert r.returncode == 0, r.stderr
    assert d.stop() == 0
    saved = tmp_path / "saved-state"
    shutil.copytree(tmp_path / "state", saved)

    _cut_starts(tmp_path, cfg, 4, reboot=True)
    d = Daemon(tmp_path, cfg, name="after-brownouts").start()
    started.append(d)
    st = d.call("slots")
    assert d.call("status")["model"]["version"] == 2, st
    assert st["active"] == "b" and st["slots"][1]["status"] == "good", st
    d.stop()

    # the control: the same cuts with no reboot in between are a crash loop
    shutil.rmtree(tmp_path / "state")
    shutil.copytree(saved, tmp_path / "state")
    _cut_starts(tmp_path, cfg, 4, reboot=False)
    d = Daemon(tmp_path, cfg, name="after-crashes").start()
    started.append(d)
    st = d.call("slots")
    assert d.call("status")["model"]["version"] == 1
    assert st["slots"][1]["status"] == "bad" and st["slots"][1]["reason"].startswith("crash_loop: 3"), st
    d.stop()
