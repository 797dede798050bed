"""Which frames the loop checks for NaN and Inf: every frame in a trial and every frame whose
outputs a reader takes; one in check_finite_every otherwise (the check, right after an invoke,
costs more than the rest of the loop's own work: scripts/bench_frame_path.py)."""

from __future__ import annotations

import time

import pytest

from edgeagent import config
from edgeagent.config import InputConfig
from edgeagent.engine import testmodels
from edgeagent.engine.model import Model
from edgeagent.inputs.factory import make_source
from edgeagent.runtime import loop as loop_mod
from edgeagent.runtime.loop import InferenceLoop


def _run(tmp_path, frames: int = 120, trial: bool = False, **kw) -> dict:
    model = Model.load(str(testmodels.write_model(tmp_path / "nan.tflite", nan=True)))
    source = make_source(InputConfig(source="synthetic", rate_hz=0.0), model.inputs[0])
    source.open()
    loop = InferenceLoop(model, source, rate_hz=0.0, **kw)
    loop.set_trial(trial)
    loop.start()
    deadline = time.monotonic() + 30
    while loop.counters.frames < frames and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.stop()
    source.close()
    c = loop.counters.to_dict()
    assert c["frames"] >= frames
    assert c["nonfinite"] == c["checked"] == loop.errors  # every checked frame of a NaN model is caught
    return c


def test_outside_a_trial_one_frame_in_n_is_checked(tmp_path):
    c = _run(tmp_path, check_finite_every=8)
    assert c["checked"] == c["frames"] // 8


def test_check_finite_every_1_checks_every_frame(tmp_path):
    c = _run(tmp_path, check_finite_every=1)
    assert c["checked"] == c["frames"]


def test_a_trial_checks_every_frame(tmp_path):
    c = _run(tmp_path, trial=True, check_finite_every=8)
    assert c["checked"] == c["frames"]


@pytest.mark.parametrize("reader", ["on_output", "on_frame"])
def test_frames_whose_outputs_are_read_are_checked(tmp_path, reader):
    seen = []
    hook = (lambda model, outs: seen.append(1)) if reader == "on_output" else (lambda model, frame, outs: seen.append(1))
    c = _run(tmp_path, check_finite_every=8, output_interval_s=0.0, **{reader: hook})
    assert c["checked"] == c["frames"] == len(seen)


def test_the_configured_default_is_the_loops():
    assert config.Config().model.check_finite_every == loop_mod.CHECK_FINITE_EVERY == 8
