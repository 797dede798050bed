"""`edgeagent bench`: the edge cases a user hits (a model slower than the round, a model that
fails, bad arguments) end in a table or a one-line error, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.engine import testmodels

REPO = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeagent", "bench", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    """~30-90 ms per invoke: slower than the whole time a round is asked for (20 ms)."""
    return testmodels.write_model(tmp_path_factory.mktemp("m") / "slow.tflite", spin=300_000)


def test_a_model_slower_than_the_round_still_gets_frames_in_every_round(slow_model):
    r = bench(str(slow_model), "--seconds", "0.02", "--rounds", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["frames_per_round"]["raw"] >= 5 and out["frames_per_round"]["agent"] >= 5
    assert out["seconds"] > 0.02  # it took what the frames needed, not the window asked for
    o = out["overhead"]
    assert o["min"] <= o["median"] <= o["max"]
    assert out["raw"]["fps"] > 0 and out["agent"]["fps"] > 0 and out["raw"]["latency_ms"]["p50"] > 20
    assert out["threads"] >= 1  # 0 asked: one per core


def test_the_human_table_reports_paired_figures(tmp_path):
    m = testmodels.write_model(tmp_path / "fast.tflite")
    r = bench(str(m), "--seconds", "0.4", "--rounds", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "1 threads, 2 paired rounds" in lines[0]
    assert lines[2].startswith("raw") and lines[3].startswith("agent")
    assert lines[4].startswith("overhead ") and "paired rounds: min" in lines[4] and "us per frame" in lines[4]


@pytest.mark.parametrize("make,args,code", [
    (lambda p: testmodels.write_model(p, fail_at_invoke=True), (), "model.invoke_failed"),
    (lambda p: p.write_bytes(b"not a model at all, just text"), (), "model.invalid"),
    (lambda p: None, (), "model.not_found"),
    (lambda p: testmodels.write_model(p), ("--rounds", "0"), "bench.bad_args"),
    (lambda p: testmodels.write_model(p), ("--seconds", "0"), "bench.bad_args"),
    (lambda p: testmodels.write_model(p), ("--seconds", "nan"), "bench.bad_args"),
])
def test_failures_are_one_line(tmp_path, make, args, code):
    p = tmp_path / "m.tflite"
    make(p)
    r = bench(str(p), "--seconds", "0.2", *args)
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if not ln.startswith("INFO:")]
    assert len(err) == 1 and err[0].startswith(f"edgeagent: {code}: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
