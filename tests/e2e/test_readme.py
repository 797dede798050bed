"""Every command block of the README runs here, in order, against a real broker and daemon, so
the README cannot rot. Only the host-specific values are substituted (port, config path); the
set-up commands in text blocks are covered by test_make_run below and by the install.sh and
unit tests in tests/core."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeagent.engine import testmodels
from tests.support.broker import Broker
from tests.support.daemon import Daemon, base_config

REPO = Path(__file__).resolve().parents[2]


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_commands(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    work = tmp_path / "work"
    work.mkdir()
    for v in (1, 2, 3):
        testmodels.write_model(work / f"model-v{v}.tflite", kind="conv", input_shape=(1, 32, 32, 3), seed=4, version_tag=v)
    cfg = base_config(tmp_path, work / "model-v1.tflite",
                      device={"id": "dev1", "groups": ["lab"]},
                      model={"name": "demo", "state_dir": str(tmp_path / "state"), "initial": str(work / "model-v1.tflite")},
                      mqtt={"host": "127.0.0.1", "port": broker.port},
                      update={"trusted_keys": [str(work / "keys")], "probation_s": 3.0, "min_inferences": 5})
    d = Daemon(tmp_path, cfg).start()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    try:
        blocks = sh_blocks()
        assert len(blocks) >= 6
        for i, block in enumerate(blocks):
            script = (block.replace("-p 1883", f"-p {broker.port}")
                      .replace("localhost:1883", f"localhost:{broker.port}")
                      .replace("/etc/edgeagent/config.toml", str(d.config_path)))
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                               text=True, timeout=180)
            assert r.returncode == 0, f"README block {i} failed:\n{block}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
            for line in r.stdout.splitlines():
                if line.startswith('{"id"'):
                    assert json.loads(line)["ok"] is True, (block, line)
        st = d.call("status")
        # v2 pushed, v3 installed and committed, rolled back to v2 over MQTT, then forward again by the CLI
        assert st["model"]["version"] == 3
    finally:
        d.stop()
        broker.stop()


def test_make_run_starts_the_daemon_without_root(tmp_path):
    lines = _run_dev_until_serving(dict(os.environ, RUN_DIR=str(tmp_path / "run")))
    assert any("serving demo v1" in l for l in lines)


def _run_dev_until_serving(env: dict, until: str = "serving demo v1") -> list[str]:
    p = subprocess.Popen(["bash", "scripts/run-dev.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if until in line:
                break
        assert any(until in l for l in lines), "".join(lines)
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(10) == 0, "".join(lines)
        return lines
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_make_run_honours_mqtt_host_after_a_first_run(tmp_path):
    """The config is written at the first run; MQTT_HOST/MQTT_PORT given later still apply."""
    env = {k: v for k, v in os.environ.items() if k not in ("MQTT_HOST", "MQTT_PORT")}
    env["RUN_DIR"] = str(tmp_path / "run")
    first = _run_dev_until_serving(env)
    assert any("no broker: standalone" in l for l in first), "".join(first)
    broker = Broker(tmp_path / "broker").start()
    try:
        second = _run_dev_until_serving(dict(env, MQTT_HOST="127.0.0.1", MQTT_PORT=str(broker.port)),
                                        until=f"mqtt: connected to 127.0.0.1:{broker.port}")
        assert any(f"broker 127.0.0.1:{broker.port}" in l for l in second), "".join(second)
        # its retained status is on the broker
        r = subprocess.run(["mosquitto_sub", "-p", str(broker.port), "-t", "edgeagent/+/status", "-C", "1",
                            "-W", "10", "-v"], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0 and "/status" in r.stdout, r.stderr
        # the rest of the kept config is untouched
        assert 'name = "demo"' in (tmp_path / "run/config.toml").read_text()
    finally:
        broker.stop()
