"""Crash consistency: SIGKILL at random instants during update, switch, commit and rollback;
after every kill the next start must serve a model that verifies from a whole state.json.
And the write order itself, traced with strace: data fsynced before the rename, the directory
after it."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeagent.engine import testmodels
from edgeagent.state.atomic import sha256_file
from edgeagent.update.keys import generate_keypair
from edgeagent.update.release import make_release

pytestmark = pytest.mark.long(seconds=20)

REPO = Path(__file__).resolve().parents[2]


def _verify_state(state_dir: Path) -> dict:
    st = json.loads((state_dir / "state.json").read_text())  # whole JSON, or this raises
    active = st["active"]
    info = st["slots"][active]
    assert info and info["status"] in ("good", "trial"), st
    assert sha256_file(state_dir / "slots" / active / "model.tflite") == info["sha256"]
    return st


def test_sigkill_at_random_instants_never_bricks(tmp_path, start_daemon, model_path):
    generate_keypair(tmp_path / "k")
    key = str(tmp_path / "k/edgeagent.key")
    upd = {"trusted_keys": [str(tmp_path / "k/edgeagent.pub")], "probation_s": 0.3, "min_inferences": 3,
           "max_trial_attempts": 1}
    rng = random.Random(1234)
    base = model_path
    version = 1
    kills = 0
    d = start_daemon(update=upd, name="crash0")
    for i in range(12):
        version += 1
        target = testmodels.write_model(tmp_path / f"v{version}.tflite", kind="dense", input_shape=(1, 16),
                                        outputs=4, seed=1, version_tag=version)
        st = json.loads((tmp_path / "state/state.json").read_text())
        active = st["slots"][st["active"]]
        # a full bundle always applies, whatever slot ended up active after the last crash
        rel = make_release(keys=[key], target=target, base=None, model="testmodel", version=version,
                           out_dir=tmp_path / f"rel{version}")
        op = rng.choice(["update", "update+rollback", "update+commit"])
        from edgeagent.control.client import ControlClient

        c = ControlClient(d.socket_path, timeout=30).connect()
        c.send("update", {"manifest": json.loads(Path(rel["manifest"]).read_text()),
                          "payload_url": Path(rel["payload"]).as_uri()})
        if op != "update":
            time.sleep(rng.uniform(0.05, 0.6))
            try:
                c2 = ControlClient(d.socket_path, timeout=5).connect()
                c2.send("rollback" if op.endswith("rollback") else "commit")
            except Exception:  # noqa: BLE001 - the daemon may be mid-switch; the kill decides
                pass
        time.sleep(rng.uniform(0.0, 1.2))
        d.kill()
        kills += 1
        c.close()
        _verify_state(tmp_path / "state")
        d = start_daemon(update=upd, name=f"crash{i + 1}")
        st = d.call("status")
        served = st["model"]
        state = _verify_state(tmp_path / "state")
        assert served["sha256"] == state["slots"][state["active"]]["sha256"]
        assert served["slot"] == state["active"]
        # let any trial settle so the next round starts from a committed state
        deadline = time.monotonic() + 10
        while d.call("status")["trial"] is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    assert kills == 12
    d.stop()


def test_state_write_order_traced_with_strace(tmp_path):
    if shutil.which("strace") is None:
        pytest.fail("strace is required (apt-get install strace; .ci/run installs it)")
    log = tmp_path / "trace"
    code = (
        "import sys; from edgeagent.state.atomic import atomic_write_json;"
        f"atomic_write_json({str(tmp_path / 'state.json')!r}, {{'a': 1}})"
    )
    r = subprocess.run(["strace", "-f", "-e", "trace=openat,write,fsync,fdatasync,rename,renameat,renameat2,close",
                        "-o", str(log), sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = log.read_text().splitlines()
    tmp_open = next(i for i, l in enumerate(lines) if "openat(" in l and ".state.json.tmp" in l and "O_CREAT" in l)
    fd = re.search(r"= (\d+)$", lines[tmp_open]).group(1)
    fsync_data = next(i for i, l in enumerate(lines) if i > tmp_open and re.search(rf"fsync\({fd}\)", l))
    rename = next(i for i, l in enumerate(lines) if "rename" in l and "state.json" in l)
    dir_open = next(i for i, l in enumerate(lines) if i > rename and "openat(" in l and "O_DIRECTORY" in l)
    dfd = re.search(r"= (\d+)$", lines[dir_open]).group(1)
    fsync_dir = next(i for i, l in enumerate(lines) if i > dir_open and re.search(rf"fsync\({dfd}\)", l))
    assert tmp_open < fsync_data < rename < dir_open < fsync_dir
