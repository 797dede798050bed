"""Your own model (issue 20, points 1 and 2): a file that is no model never seeds the state, a
changed model.initial is named in the log, and `edgeagent reset` starts afresh while keeping the
anti-rollback versions."""

from __future__ import annotations

import json
import subprocess
import sys
import time

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


def test_status_shows_the_new_models_figures_right_after_a_switch(tmp_path, start_daemon, model_path):
    """Issue 20, point 7: with a 30 s telemetry interval, `status` went on showing the previous
    model's telemetry for up to 30 s after a switch; now a sample follows each switch at once."""
    from edgeagent.update.keys import generate_keypair
    from tests.e2e.test_update import release, trusted, wait_until

    generate_keypair(tmp_path / "k1")
    d = start_daemon(telemetry={"interval_s": 30.0}, update={**trusted(tmp_path, "k1"), "probation_s": 30.0})
    wait_until(lambda: (d.call("status")["telemetry"] or {}).get("model", {}).get("version") == 1, timeout=10)
    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2), 2, base=model_path)
    assert cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"]).returncode == 0
    wait_until(lambda: d.call("status")["model"]["version"] == 2, timeout=10)
    time.sleep(1.5)  # well inside the interval
    tel = d.call("status")["telemetry"]
    assert tel["model"]["version"] == 2 and tel["model"]["trial"] is True, tel["model"]
    assert d.call("rollback")["version"] == 1
    time.sleep(1.5)
    assert d.call("status")["telemetry"]["model"]["version"] == 1


def test_cpu_is_named_the_same_in_the_log_line_and_top():
    """Issue 20, point 7: "cpu" was the agent's share of one core in the log line and the system's
    in `top`."""
    from edgeagent.cli.top import TopView
    from edgeagent.telemetry.figures import figures_line

    t = {"model": {"name": "m", "version": 1, "slot": "a"}, "inference": {"fps": 10.0, "latency_ms": {}},
         "system": {"cpu_percent": 40.0, "agent_cpu_percent": 95.0}, "power": {}}
    assert "agent cpu 95%" in figures_line(t)
    view = TopView("dev")
    view.on_telemetry({**t, "seq": 1})
    line = next(ln for ln in view.lines() if "cpu" in ln)
    assert "system cpu 40% (of all cores)" in line and "agent cpu 95% (of one core)" in line
