"""The health check's own logic on real models: paired, alternating timing; golden sets in both
modes; a malformed golden set is the publisher's error, not a crash; the child stays light."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeagent.engine import testmodels
from edgeagent.engine.model import Model
from edgeagent.update import health

REPO = Path(__file__).resolve().parents[2]


class Recording(Model):
    """A real model that notes the order of invokes in a shared log."""

    log: list = []

    def invoke(self) -> None:
        Recording.log.append(self.path)
        super().invoke()


def load(path: Path) -> Recording:
    m = Model.load(str(path))
    m.__class__ = Recording
    return m


def test_paired_invokes_alternate_who_goes_first(tmp_path):
    cand = load(testmodels.write_model(tmp_path / "c.tflite", input_shape=(1, 16), seed=1))
    base = load(testmodels.write_model(tmp_path / "b.tflite", input_shape=(1, 16), seed=2))
    frames = [np.full(16, i, np.float32) for i in range(3)]
    Recording.log = []
    c_t, b_t, finite = health._paired_invokes(cand, base, frames, runs=6)
    assert len(c_t) == len(b_t) == 18 and finite
    assert all(wall > 0 and cpu >= 0 for wall, cpu in c_t + b_t)
    pairs = [tuple(Path(p).stem for p in Recording.log[i:i + 2]) for i in range(0, 36, 2)]
    assert pairs == [("c", "b"), ("b", "c")] * 9
    # with few frames, frames are cycled up to the minimum number of pairs
    c_t, b_t, _ = health._paired_invokes(cand, base, frames[:1], runs=3)
    assert len(c_t) == len(b_t) == health.MIN_PAIRS


def _npz(**arrays) -> str:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return base64.b64encode(buf.getvalue()).decode()


def test_golden_outputs_mode_with_a_tolerance(tmp_path):
    ref = Model.load(str(testmodels.write_model(tmp_path / "r.tflite", input_shape=(1, 16), seed=1)))
    x = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    outs = []
    for f in x:
        ref.preprocess(f)
        ref.invoke()
        outs.append(ref.outputs_view()[0][0].copy())
    outs = np.array(outs)
    same = health.run_golden(ref, {"npz_b64": _npz(inputs=x, outputs=outs), "min_pass_pct": 100})
    assert same == {"examples": 20, "passed": 20, "pass_pct": 100.0, "min_pass_pct": 100, "mode": "outputs"}
    shifted = outs + 0.01  # 1% off: fails at the default tolerance (1000e-6), passes at 5%
    assert health.run_golden(ref, {"npz_b64": _npz(inputs=x, outputs=shifted), "min_pass_pct": 1})["passed"] == 0
    g = {"npz_b64": _npz(inputs=x, outputs=shifted), "min_pass_pct": 1, "tol_e6": 50_000}
    assert health.run_golden(ref, g)["passed"] == 20


@pytest.mark.parametrize("arrays, fragment", [
    (lambda x: {"inputs": x}, "one of 'labels' or 'outputs'"),
    (lambda x: {"inputs": x.astype(np.float64), "labels": np.zeros(4, np.int64)}, "the model takes float32"),
    (lambda x: {"inputs": x[:, :8], "labels": np.zeros(4, np.int64)}, "[N, 16]"),
    (lambda x: {"inputs": x, "labels": np.zeros(3, np.int64)}, "labels must be 4 integers"),
    (lambda x: {"inputs": x, "outputs": np.zeros((4, 5), np.float32)}, "output 0 is [N, 4]"),
])
def test_a_malformed_golden_set_is_a_value_error(tmp_path, arrays, fragment):
    m = Model.load(str(testmodels.write_model(tmp_path / "m.tflite", input_shape=(1, 16), seed=1)))
    x = np.zeros((4, 16), np.float32)
    with pytest.raises(ValueError) as ei:
        health.run_golden(m, {"npz_b64": _npz(**arrays(x)), "min_pass_pct": 50})
    assert fragment in str(ei.value)


def test_a_pickled_golden_set_is_refused(tmp_path):
    m = Model.load(str(testmodels.write_model(tmp_path / "m.tflite", input_shape=(1, 16), seed=1)))
    obj = np.array([{"x": 1}], dtype=object)
    with pytest.raises(ValueError):
        health.run_golden(m, {"npz_b64": _npz(inputs=obj, labels=np.zeros(1, np.int64)), "min_pass_pct": 50})


def test_the_health_child_imports_no_camera_or_image_library():
    code = ("import sys, edgeagent.update.health as h, edgeagent.engine.model; "
            "print(sorted(m for m in ('cv2', 'PIL', 'rich', 'paho') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
