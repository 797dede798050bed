"""One loaded model: the interpreter, its signature, and the adaptation of frames into it.

`preprocess` is on the per-frame path, so it allocates nothing after the first frame of a
given shape: the adapter for a (shape, dtype) of frame is built once with its buffers, and
frames are written into the interpreter's own input buffer. Outputs are copied (dequantised
when needed) into preallocated arrays, because LiteRT refuses to invoke while numpy views of
its internal buffers are alive.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable

import numpy as np

from edgeagent.engine.backend import load_backend
from edgeagent.engine.spec import DelegateSpec, TensorSpec
from edgeagent.errors import ModelError, SourceError

log = logging.getLogger("edgeagent.engine")

_CV2: list = []


def _cv2() -> Any:
    """OpenCV when installed (a faster, better-quality resize), imported on first use: most
    models never resize, and the health child must not pay for the import."""
    if not _CV2:
        try:
            import cv2  # type: ignore
        except Exception:  # noqa: BLE001
            cv2 = None
        _CV2.append(cv2)
    return _CV2[0]


def _EXACT(frame: np.ndarray, dst: np.ndarray) -> None:  # a marker: preprocess uses set_tensor
    np.copyto(dst, frame)


def _spec(d: dict) -> TensorSpec:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorSpec(d["name"], int(d["index"]), tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]),
                      float(scale), int(zp))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().replace("\n", " ")
    return (text or type(e).__name__)[:300]


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, as a container or taskset limits
    it), which is what `num_threads = 0` gives the interpreter: one thread per core. LiteRT's
    own default is a single thread, 1.17-1.43x slower on 2 cores."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Model:
    def __init__(self, path: str, interpreter: Any, backend: str, input_mean: float, input_std: float) -> None:
        self.path = path
        self.interpreter = interpreter
        self.backend = backend
        self.inputs = [_spec(d) for d in interpreter.get_input_details()]
        self.outputs = [_spec(d) for d in interpreter.get_output_details()]
        self._mean = float(input_mean)
        self._inv_std = 1.0 / float(input_std)
        self._in = self.inputs[0]
        self._in_fn = interpreter.tensor(self._in.index)
        self._out_fns = [interpreter.tensor(o.index) for o in self.outputs]
        self._out_bufs = [np.zeros(o.shape, np.float32 if o.quantized else o.dtype) for o in self.outputs]
        self._adapters: dict[tuple, Callable[[np.ndarray, np.ndarray], None]] = {}
        self._last: tuple = ((), None, None)  # (shape, dtype, adapter) of the previous frame
        # outputs that can hold NaN or Inf (float, not quantised): the only ones checked per frame
        self._float_fns = [fn for o, fn in zip(self.outputs, self._out_fns)
                           if not o.quantized and np.issubdtype(o.dtype, np.floating)]

    num_threads: int = 0  # what the interpreter was built with
    labels: tuple[str, ...] | None = None  # the slot's labels (state/labels.py), set by who loads it
    reference: Any = None  # the slot's quality reference (state/reference.py), set by who loads it
    delegate: dict | None = None  # {"name", "library", "state": "active" | "fallback", "reason"}

    @classmethod
    def load(cls, path: str, *, backend: str = "auto", num_threads: int = 0, delegate: Any = None,
             input_mean: float = 0.0, input_std: float = 255.0) -> "Model":
        """Load and allocate; every way a file can be bad becomes ModelError with one line."""
        b = load_backend(backend)
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise ModelError("model.not_found", f"{path}: {e.strerror}") from None
        if size < 16:
            raise ModelError("model.invalid", f"{path}: {size} bytes is not a TFLite model")
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head[4:8] != b"TFL3":
            raise ModelError("model.invalid", f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
        spec = DelegateSpec.of(delegate)
        delegates, state = [], None
        if spec is not None:
            try:
                delegates.append(b.load_delegate(spec.library, dict(spec.options)))
                state = {"name": spec.name, "library": spec.library, "state": "active", "exclusive": spec.exclusive}
            except (ValueError, OSError, RuntimeError) as e:
                why = f"{spec.library}: {_first_line(e)}"
                if spec.fallback != "cpu":
                    raise ModelError("model.delegate_failed", why) from None
                log.warning("delegate %s did not load (%s): serving on the CPU (fallback = \"cpu\")", spec.name, why)
                state = {"name": spec.name, "library": spec.library, "state": "fallback", "reason": why}
        threads = num_threads or cpu_count()
        kw: dict[str, Any] = {"model_path": path, "num_threads": threads}
        if delegates:
            kw["experimental_delegates"] = delegates
        try:
            it = b.Interpreter(**kw)
            it.allocate_tensors()
        except MemoryError:
            raise ModelError("model.out_of_memory", f"{path}: not enough memory for the tensor arena") from None
        except (ValueError, RuntimeError) as e:
            raise ModelError("model.invalid", f"{path}: {_first_line(e)}") from None
        if not it.get_input_details() or not it.get_output_details():
            raise ModelError("model.invalid", f"{path}: the model has no inputs or no outputs")
        m = cls(path, it, b.name, input_mean, input_std)
        m.num_threads = threads
        m.delegate = state
        return m

    def io_signature(self) -> dict:
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs]}

    # -- per frame ----------------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray) -> None:
        """Adapt one source frame into input 0 (resize, channels, dtype, normalise, quantise).
        A frame like the previous one (the usual case) reuses its adapter without a lookup; a
        frame already in the input's shape and dtype goes in with one set_tensor."""
        shape, dtype, adapt = self._last
        if frame.shape != shape or frame.dtype is not dtype:
            key = (frame.shape, frame.dtype.str)
            adapt = self._adapters.get(key)
            if adapt is None:
                adapt = self._adapters[key] = self._make_adapter(frame)
            self._last = (frame.shape, frame.dtype, adapt)
        if adapt is _EXACT:
            self.interpreter.set_tensor(self._in.index, frame)
            return
        dst = self._in_fn()
        adapt(frame, dst)
        del dst  # no view of interpreter memory may outlive this call

    def nonfinite(self) -> bool:
        """Whether an output of the last invoke holds NaN or Inf, read in the interpreter's own
        buffers (no copy): the sum of a float output is finite unless an element is not, or the
        sum overflows, which the exact check then tells apart. Integer outputs cannot be."""
        for fn in self._float_fns:
            v = fn()
            try:
                if not math.isfinite(v.sum()) and not np.isfinite(v).all():
                    return True
            finally:
                del v  # LiteRT refuses to invoke while a view of its buffers is alive
        return False

    def invoke(self) -> None:
        try:
            self.interpreter.invoke()
        except (RuntimeError, ValueError) as e:
            raise ModelError("model.invoke_failed", _first_line(e)) from None

    def outputs_view(self) -> list[np.ndarray]:
        """The outputs of the last invoke, in arrays reused from call to call."""
        for o, fn, buf in zip(self.outputs, self._out_fns, self._out_bufs):
            v = fn()
            if o.quantized:
                np.subtract(v, o.zero_point, out=buf, casting="unsafe")
                buf *= o.scale
            else:
                np.copyto(buf, v)
            del v
        return self._out_bufs

    def close(self) -> None:
        self._in_fn = None
        self._out_fns = []
        self.interpreter = None

    # -- adapters -----------------------------------------------------------------------------
    def _make_adapter(self, frame: np.ndarray) -> Callable[[np.ndarray, np.ndarray], None]:
        spec = self._in
        shape = spec.shape
        n = int(np.prod(shape))
        convert = self._converter(frame.dtype)
        if frame.dtype == spec.dtype and frame.shape == shape and frame.flags.c_contiguous:
            return _EXACT  # one set_tensor
        if frame.dtype == spec.dtype and frame.size == n and frame.shape == shape[1:]:
            return lambda f, dst: np.copyto(dst, f.reshape(shape))  # a straight copy
        image_model = len(shape) == 4
        image_frame = frame.ndim == 3 and frame.shape[-1] in (1, 3, 4) or frame.ndim == 2 and image_model
        if image_model and image_frame:
            resize = self._resizer(frame.shape[:2], shape[1:3])
            chans = self._channel_fn(frame.shape[2] if frame.ndim == 3 else 1, shape[3])

            def image(f: np.ndarray, dst: np.ndarray) -> None:
                convert(chans(resize(f)), dst[0])

            return image
        if frame.size == 0 or not np.issubdtype(frame.dtype, np.number):
            raise SourceError("input.bad_frame", f"cannot feed a {frame.dtype} frame of shape {frame.shape} to input {shape}")
        # sensor windows and other vectors: flatten, then crop or zero-pad to the input size
        flat = np.zeros(n, np.float32)
        m = min(n, frame.size)

        def vector(f: np.ndarray, dst: np.ndarray) -> None:
            flat[:m] = f.reshape(-1)[:m]
            convert(flat.reshape(shape), dst)

        return vector

    def _converter(self, frame_dtype: np.dtype) -> Callable[[np.ndarray, np.ndarray], None]:
        """input_mean/input_std normalise pixels (integer frames); float frames (sensor values,
        synthetic data) already carry real values and are fed as they are."""
        spec = self._in
        mean, inv_std = (self._mean, self._inv_std) if np.issubdtype(frame_dtype, np.integer) else (0.0, 1.0)
        if spec.dtype == np.float32:
            if mean == 0.0 and inv_std == 1.0:
                def as_float(src: np.ndarray, dst: np.ndarray) -> None:
                    np.copyto(dst, src, casting="unsafe")
                return as_float
            k, off = np.float32(inv_std), np.float32(-mean * inv_std)

            def to_float(src: np.ndarray, dst: np.ndarray) -> None:  # one float32 multiply-add
                np.multiply(src, k, out=dst, casting="unsafe")
                dst += off
            return to_float
        if spec.quantized:
            info = np.iinfo(spec.dtype)
            # a uint8 image into a uint8 model quantised as pixel/255: the values are already right
            if spec.dtype == np.uint8 and spec.zero_point == 0 and abs(spec.scale * 255.0 - 1.0) < 1e-3 \
                    and mean == 0.0 and abs(inv_std * 255.0 - 1.0) < 1e-6:
                def same(src: np.ndarray, dst: np.ndarray) -> None:
                    np.copyto(dst, src, casting="unsafe")
                return same
            k = inv_std / spec.scale
            off = spec.zero_point - mean * k
            tmp: dict[tuple, np.ndarray] = {}

            def quantise(src: np.ndarray, dst: np.ndarray) -> None:
                buf = tmp.get(src.shape)
                if buf is None:
                    buf = tmp[src.shape] = np.empty(src.shape, np.float32)
                np.multiply(src, k, out=buf, casting="unsafe")
                buf += off
                np.rint(buf, out=buf)
                np.clip(buf, info.min, info.max, out=buf)
                np.copyto(dst, buf.reshape(dst.shape), casting="unsafe")
            return quantise

        def plain(src: np.ndarray, dst: np.ndarray) -> None:
            np.copyto(dst, src.reshape(dst.shape), casting="unsafe")
        return plain

    @staticmethod
    def _resizer(src_hw: tuple[int, ...], dst_hw: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
        (sh, sw), (dh, dw) = src_hw, dst_hw
        if (sh, sw) == (dh, dw):
            return lambda f: f
        cv2 = _cv2()
        if cv2 is not None:
            interp = cv2.INTER_AREA if sh > dh else cv2.INTER_LINEAR
            return lambda f: cv2.resize(f, (dw, dh), interpolation=interp)
        rows = (np.arange(dh) * sh // dh).astype(np.intp)
        cols = (np.arange(dw) * sw // dw).astype(np.intp)
        return lambda f: f[rows[:, None], cols]

    @staticmethod
    def _channel_fn(have: int, want: int) -> Callable[[np.ndarray], np.ndarray]:
        if have == want:
            return lambda f: f if f.ndim == 3 else f[..., None]
        if want == 1:
            return lambda f: f.mean(axis=-1, keepdims=True) if f.ndim == 3 else f[..., None]
        if have == 1:
            return lambda f: np.repeat(f.reshape(f.shape[0], f.shape[1], 1), want, axis=-1)
        if have == 4 and want == 3:
            return lambda f: f[..., :3]
        raise SourceError("input.bad_frame", f"cannot map {have} channels to {want}")


def probe_delegate(delegate: Any, backend: str = "auto") -> None:
    """Load the configured delegate once and let it go: a library that does not load (or a device
    that is not there) is a configuration fault at start, not a model's (model.delegate_failed)."""
    spec = DelegateSpec.of(delegate)
    if spec is None:
        return
    try:
        d = load_backend(backend).load_delegate(spec.library, dict(spec.options))
    except (ValueError, OSError, RuntimeError) as e:
        raise ModelError("model.delegate_failed", f"{spec.library}: {_first_line(e)}") from None
    del d
