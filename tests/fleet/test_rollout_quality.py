"""Quality as a rollout criterion (issue 22): `rollout start --max-drift-psi` halts a rollout whose
new model commits healthy but predicts a different world than its signed reference says, and
completes one whose predictions match. Two daemons whose cameras (image folders) see dark scenes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeagent.engine import testmodels
from tests.fleet.test_rollout_control import ea
from tests.support.daemon import REPO, Daemon, base_config

pytestmark = pytest.mark.long(seconds=20)


def _images(folder, lo, hi, seed):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(40):
        Image.fromarray(rng.integers(lo, hi, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _release(tmp_path, signer, base, version, reference):
    target = testmodels.write_model(tmp_path / f"v{version}.tflite", kind="conv", input_shape=(1, 32, 32, 3),
                                    outputs=8, seed=2, version_tag=version)
    out = tmp_path / f"rel{version}"
    r = subprocess.run([sys.executable, "-m", "edgeagent", "release", "--key", str(signer / "edgeagent.key"),
                        "--base", str(base), "--target", str(target), "--model", "testmodel", "--version", str(version),
                        "--out", str(out), "--reference", str(reference), "--reference-window", "20"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    return target, out / f"testmodel-{version}.manifest.json"


@pytest.fixture
def cameras(tmp_path, broker, signer):
    dark = _images(tmp_path / "dark", 0, 40, seed=6)
    v1 = testmodels.write_model(tmp_path / "v1.tflite", kind="conv", input_shape=(1, 32, 32, 3), outputs=8, seed=2)
    ds = []
    for dev in ("qa", "qb"):
        t = tmp_path / dev
        t.mkdir()
        cfg = base_config(t, v1, device={"id": dev, "groups": ["lab"]},
                          mqtt={"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                          input={"source": "images", "rate_hz": 50.0, "images": {"dir": str(dark)}},
                          update={"trusted_keys": [str(signer / "edgeagent.pub")], "probation_s": 0.5,
                                  "min_inferences": 3})
        ds.append(Daemon(t, cfg, name=dev))
    for d in ds:
        d.start(wait_ready=False)
    for d in ds:
        d.wait_for("READY=1", timeout=60)
    yield v1, dark, ds
    for d in ds:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def test_max_drift_psi_completes_a_model_that_matches_and_halts_one_that_drifts(tmp_path, broker, signer, cameras):
    v1, dark, ds = cameras
    # v2's reference is the scenes the cameras see: its first window matches it
    v2, m2 = _release(tmp_path, signer, v1, 2, dark)
    r = ea(tmp_path, broker, "rollout", "start", str(m2), "--group", "lab", "--transfer", "--phases", "100",
           "--soak", "0", "--max-drift-psi", "0.25", "--id", "q2", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert sorted(out["tally"]["devices"]["committed"]) == ["qa", "qb"] and out["tally"]["drifted"] == 0
    assert out["rollout"]["criteria"]["max_drift_psi"] == 0.25

    # v3 was validated on bright scenes: on these cameras it commits healthy, and predicts otherwise
    bright = _images(tmp_path / "bright", 150, 256, seed=5)
    _, m3 = _release(tmp_path, signer, v2, 3, bright)
    r = ea(tmp_path, broker, "rollout", "start", str(m3), "--group", "lab", "--transfer", "--phases", "100",
           "--soak", "0", "--max-drift-psi", "0.25", "--max-failure-pct", "0", "--id", "q3", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["error"]["code"] == "rollout.halted" and "(quality.drift)" in out["error"]["message"]
    assert out["tally"]["drifted"] >= 1 and out["tally"]["codes"][out["tally"]["devices"]["drifted"][0]] == "quality.drift"
    status = ea(tmp_path, broker, "rollout", "status", "q3")
    assert "drifted: " in status.stdout and "(quality.drift)" in status.stdout, status.stdout

    # a manifest without a signed reference cannot promise a drift criterion
    plain = tmp_path / "plain.json"
    env = json.loads(m3.read_text())
    del env["signed"]["monitor"]
    plain.write_text(json.dumps(env))
    r = ea(tmp_path, broker, "rollout", "start", str(plain), "--group", "lab", "--transfer", "--max-drift-psi", "0.25",
           "--id", "q4")
    assert r.returncode != 0 and "signed reference" in r.stderr
