"""Every command block of the README runs here, in order, against a real broker and the daemon
`make run` starts, so the README cannot rot. Only the host-specific values are substituted (port,
config path); the set-up commands in text blocks are covered by test_make_run below and by the
install.sh and unit tests in tests/core."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.broker import Broker

pytestmark = pytest.mark.long(seconds=50)

REPO = Path(__file__).resolve().parents[2]


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_in_order_against_make_run(tmp_path):
    """Issue 20, point 4: a new user's path, from a fresh state: `make run`'s own config and daemon,
    then every command block as the README prints it, in order (the CLI, the cookbook with the
    group ping, keygen, a second model, release, push, the update by hand with commit and
    rollback, the rollback by the CLI, the fleet block). Substituted: the broker's port, and the
    device's config path by the one `make run` writes."""
    broker = Broker(tmp_path / "broker").start()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", RUN_DIR=str(work / ".run"),
               MQTT_HOST="localhost", MQTT_PORT=str(broker.port))
    env.pop("DEVICE_ID", None)
    run = subprocess.Popen(["bash", "scripts/run-dev.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(run.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("mqtt: connected" in line for line in out) and time.monotonic() < deadline:
            assert run.poll() is None, "".join(out)
            time.sleep(0.1)
        assert any("device dev1, topic prefix edgeagent/dev1, groups lab" in line for line in out), "".join(out)
        blocks = sh_blocks()
        assert len(blocks) >= 8
        results = []
        for i, block in enumerate(blocks):
            script = (block.replace("-p 1883", f"-p {broker.port}")
                      .replace("localhost:1883", f"localhost:{broker.port}")
                      .replace("/etc/edgeagent/config.toml", ".run/config.toml"))
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                               text=True, timeout=180)
            assert r.returncode == 0, f"README block {i} failed:\n{block}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
            for line in r.stdout.splitlines():
                if line.startswith('{"id"'):
                    assert json.loads(line)["ok"] is True, (block, line)
            results.append(r.stdout + r.stderr)
        assert '{"id":"6","ok":true' in results[2], results[2]  # the group ping (edgeagent/group/lab/cmd) answered
        assert "update.committed" in results[4] and "probation: " in results[4], results[4]
        assert "rollout demo-4-lab: complete" in results[7], results[7]
        status = subprocess.run([sys.executable, "-m", "edgeagent", "-c", ".run/config.toml", "status", "--json"],
                                cwd=work, capture_output=True, text=True, timeout=30)
        assert json.loads(status.stdout)["model"]["version"] == 4, status.stdout
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
            try:
                run.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
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


def test_make_run_serves_your_own_model_with_its_labels(tmp_path):
    """Issue 20, point 2: `make run MODEL=... LABELS=...` serves the user's model; a model other
    than the one .run/ was seeded with starts a fresh state and says so (before: the demo model
    kept serving, with no word)."""
    from edgeagent.engine import testmodels

    env = {k: v for k, v in os.environ.items() if k not in ("MQTT_HOST", "MQTT_PORT", "MODEL", "LABELS")}
    env["RUN_DIR"] = str(tmp_path / "run")
    _run_dev_until_serving(env)
    mine = testmodels.write_model(tmp_path / "mine.tflite", kind="dense", input_shape=(1, 16), outputs=3, seed=7)
    (tmp_path / "mine.txt").write_text("red\ngreen\nblue\n")
    lines = _run_dev_until_serving(dict(env, MODEL=str(mine), LABELS=str(tmp_path / "mine.txt")))
    assert any("MODEL/LABELS changed: starting a fresh state" in l for l in lines), "".join(lines)
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(tmp_path / "run/config.toml"), "slots", "--json"],
                       capture_output=True, text=True, timeout=30)
    a = next(s for s in json.loads(r.stdout)["slots"] if s["slot"] == "a")
    assert a["sha256"] == hashlib.sha256(mine.read_bytes()).hexdigest() and a["labels"] == 3
    # the same MODEL again: the state is kept
    again = _run_dev_until_serving(dict(env, MODEL=str(mine), LABELS=str(tmp_path / "mine.txt")))
    assert not any("starting a fresh state" in l for l in again), "".join(again)
