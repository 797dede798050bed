"""The real LiteRT interpreter on generated models: loading, adaptation of frames, failures."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgeagent.engine import backend, testmodels
from edgeagent.engine.model import Model
from edgeagent.errors import ModelError, SourceError


def load(tmp_path, name="m.tflite", **kw):
    return Model.load(str(testmodels.write_model(tmp_path / name, **kw)))


def run(m, frame):
    m.preprocess(frame)
    m.invoke()
    return [o.copy() for o in m.outputs_view()]


def test_auto_picks_litert_and_reports_the_signature(tmp_path):
    m = load(tmp_path, kind="conv", input_shape=(1, 24, 24, 3), outputs=5)
    assert m.backend == "litert"
    sig = m.io_signature()
    assert sig["inputs"][0]["shape"] == [1, 24, 24, 3] and sig["inputs"][0]["dtype"] == "float32"
    assert sig["outputs"][0]["shape"] == [1, 5]


def test_dense_output_matches_numpy(tmp_path):
    """The generator's weights are known: the interpreter must compute W x + b."""
    m = load(tmp_path, input_shape=(1, 8), outputs=3, seed=5)
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((3, 8)) / np.sqrt(8)).astype(np.float32)
    b = (rng.standard_normal(3) * 0.1).astype(np.float32)
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    out = run(m, x)[0]
    # float frames are real values, fed as they are
    np.testing.assert_allclose(out[0], w @ x[0] + b, rtol=1e-4, atol=1e-5)
    # pixels (uint8) are normalised with input_mean/input_std (default 0/255)
    out = run(m, np.arange(8, dtype=np.uint8).reshape(1, 8))[0]
    np.testing.assert_allclose(out[0], w @ (x[0] / 255.0) + b, rtol=1e-4, atol=1e-5)


def test_image_frames_of_any_size_are_resized(tmp_path):
    m = load(tmp_path, kind="conv", input_shape=(1, 32, 32, 3))
    for shape in [(480, 640, 3), (32, 32, 3), (10, 7, 3), (48, 48)]:
        out = run(m, np.full(shape, 128, np.uint8))[0]
        assert out.shape == (1, 4) and np.isfinite(out).all()
    # a uniform grey image gives the same answer whatever its size
    a = run(m, np.full((480, 640, 3), 128, np.uint8))[0]
    b = run(m, np.full((32, 32, 3), 128, np.uint8))[0]
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantised_inputs(tmp_path, dtype):
    m = load(tmp_path, kind="conv", input_shape=(1, 16, 16, 3), input_dtype=dtype)
    assert m.inputs[0].quantized and m.inputs[0].dtype == np.dtype(dtype)
    f = np.full((16, 16, 3), 200, np.uint8)
    m.preprocess(f)
    q = m.interpreter.get_tensor(m.inputs[0].index)
    # pixel 200 -> real 200/255 -> q = real / (1/255) + zp
    assert int(q.ravel()[0]) == (200 if dtype == "uint8" else 200 - 128)
    m.invoke()
    assert np.isfinite(m.outputs_view()[0]).all()


def test_sensor_windows_are_cropped_or_padded(tmp_path):
    m = load(tmp_path, input_shape=(1, 12))
    assert run(m, np.ones((4, 3), np.float32))[0].shape == (1, 4)  # exactly 12 values
    assert run(m, np.ones((10, 3), np.float32))[0].shape == (1, 4)  # cropped
    assert run(m, np.ones((2, 3), np.float32))[0].shape == (1, 4)  # zero-padded


def test_a_frame_that_cannot_be_adapted_is_a_source_error(tmp_path):
    m = load(tmp_path, kind="conv", input_shape=(1, 16, 16, 3))
    with pytest.raises(SourceError) as ei:
        m.preprocess(np.array(["a", "b"]))
    assert ei.value.code == "input.bad_frame"


def test_nan_model_gives_non_finite_output(tmp_path):
    assert not np.isfinite(run(load(tmp_path, nan=True), np.ones((1, 8), np.float32))[0]).all()


def test_nan_after_goes_bad_after_n_invokes(tmp_path):
    m = load(tmp_path, nan_after=5)
    outs = [np.isfinite(run(m, np.ones((1, 8), np.float32))[0]).all() for _ in range(8)]
    assert outs == [True] * 5 + [False] * 3


def test_slow_model_is_much_slower(tmp_path):
    fast, slow = load(tmp_path, "f.tflite"), load(tmp_path, "s.tflite", slow=1)

    def median(m):
        ts = []
        for _ in range(30):
            t = time.perf_counter()
            m.invoke()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    assert median(slow) > 5 * median(fast)


def test_exception_at_invoke(tmp_path):
    m = load(tmp_path, fail_at_invoke=True)
    with pytest.raises(ModelError) as ei:
        m.invoke()
    assert ei.value.code == "model.invoke_failed" and "\n" not in str(ei.value)


@pytest.mark.parametrize("content", [b"", b"hello", b"TFL3" * 100, b"\x00" * 4 + b"TFL3" + b"\x00" * 64])
def test_not_a_model(tmp_path, content):
    p = tmp_path / "bad.tflite"
    p.write_bytes(content)
    with pytest.raises(ModelError) as ei:
        Model.load(str(p))
    assert ei.value.code == "model.invalid" and str(p) in str(ei.value)


def test_truncated_model(tmp_path):
    good = testmodels.build_model(kind="conv", input_shape=(1, 16, 16, 3))
    p = tmp_path / "cut.tflite"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError):
        Model.load(str(p))


def test_missing_backend_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tflite(name, *a, **kw):
        if name.startswith("tflite_runtime"):
            raise ImportError("No module named 'tflite_runtime'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tflite)
    backend._cache.clear()
    with pytest.raises(ModelError) as ei:
        backend.load_backend("tflite")
    assert ei.value.code == "model.backend_missing" and "edgeagent[tflite]" in str(ei.value)
    backend._cache.clear()


def test_missing_delegate_is_a_one_line_error(tmp_path):
    p = testmodels.write_model(tmp_path / "m.tflite")
    with pytest.raises(ModelError) as ei:
        Model.load(str(p), delegate=str(tmp_path / "libnothere.so"))
    assert ei.value.code == "model.delegate_failed"


def test_finetune_keeps_a_valid_model_of_the_same_size(tmp_path):
    src = testmodels.build_model(kind="conv", input_shape=(1, 16, 16, 3), outputs=32)
    ft = testmodels.finetune(src, last_n_buffers=1)
    assert ft != src and abs(len(ft) - len(src)) < 64
    p = tmp_path / "ft.tflite"
    p.write_bytes(ft)
    assert np.isfinite(run(Model.load(str(p)), np.ones((16, 16, 3), np.uint8))[0]).all()
