"""Your own model (issue 20, points 1 and 2): a file that is no model never seeds the state, a
changed model.initial is named in the log, and `edgeagent reset` starts afresh while keeping the
anti-rollback versions."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.e2e.test_update import REPO, cli, model
from tests.support.daemon import Daemon, base_config, write_config


def test_a_file_that_is_no_model_is_refused_before_anything_is_written(tmp_path, model_path):
    junk = tmp_path / "x.tflite"
    junk.write_text("hello\n")
    cfg = write_config(tmp_path / "c.toml", base_config(tmp_path, junk))
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(cfg), "run"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 2, r.stderr
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("edgeagent: ")]
    assert len(line) == 1 and "model.initial_invalid" in line[0] and "6 bytes is not a TFLite model" in line[0], \
        r.stderr
    assert not (tmp_path / "state" / "state.json").exists() and not (tmp_path / "state" / "slots").exists()
    # pointing initial at a real model is then all it takes
    d = Daemon(tmp_path, base_config(tmp_path, model_path), name="good").start()
    assert d.call("status")["model"]["version"] == 1
    d.stop()


def test_a_changed_initial_is_named_and_reset_adopts_it(tmp_path, model_path):
    d = Daemon(tmp_path, base_config(tmp_path, model_path), name="first").start()
    d.stop()
    (tmp_path / "state" / "anchor.json").write_text(json.dumps({"high_water": {"testmodel": 5}, "good": []}))
    mine = model(tmp_path, "mine.tflite", version_tag=9, seed=4)
    cfg = base_config(tmp_path, mine)
    d = Daemon(tmp_path, cfg, name="second").start()
    assert d.call("status")["model"]["sha256"] != _sha(mine)  # initial seeds an empty state only ...
    assert "is not the model serving" in d.log() and "edgeagent reset" in d.log()  # ... and says so
    r = cli(d.config_path, "reset", "--yes")
    assert r.returncode == 1 and "reset.daemon_running" in r.stderr
    d.stop()
    r = cli(d.config_path, "reset")  # no terminal to ask on
    assert r.returncode == 1 and "--yes" in r.stderr
    r = cli(d.config_path, "reset", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["high_water"]["testmodel"] == 5
    d = Daemon(tmp_path, cfg, name="third").start()
    st = d.call("status")
    assert st["model"]["sha256"] == _sha(mine) and st["model"]["slot"] == "a"
    assert "is not the model serving" not in d.log()
    assert d.call("slots")["high_water"]["testmodel"] == 5  # the anti-rollback anchor survived
    d.stop()


def _sha(p) -> str:
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()
