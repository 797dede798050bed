"""Prediction quality in production: each window of live frames against the model's reference.

The inference thread pays for three appends a frame (`on_frame`: the argmax and max of output 0,
which a classifier's small output gives in a microsecond, and a subsampled mean of the input);
a full window is handed over whole. Everything else happens on the telemetry thread (`poll`):
the histograms, the population stability index (PSI) of the predicted class, the top confidence
and the input statistic against the reference (state/reference.py), the share of low-confidence
frames, and the alarm with hysteresis: `model.drift` when a PSI is over the alarm line for
`alarm_windows` windows in a row, `model.drift_cleared` once it is back under the warn line.

Without a signed reference the monitor learns one from the first `learn_frames` frames of a
committed model and stores it beside the model (`reference: learned`); a model on trial is
judged against a signed reference only.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from typing import Any, Callable

import numpy as np

from edgeagent.state import reference as ref_mod
from edgeagent.state.reference import Reference

log = logging.getLogger("edgeagent.quality")

METRICS = ("class", "confidence", "input")
_sum = np.add.reduce


class _Window:
    __slots__ = ("model", "cls", "conf", "inp", "started", "limit", "low")

    def __init__(self, model: Any, limit: int, low: float) -> None:
        self.model = model
        ref = getattr(model, "reference", None)
        self.limit = ref.window if ref is not None and ref.source == "signed" else limit  # the publisher's window
        self.low = ref.low_confidence_e6 / 1e6 if ref is not None else low
        self.cls: list[int] = []
        self.conf: list[float] = []
        self.inp: list[Any] = []
        self.started = time.monotonic()


class QualityMonitor:
    def __init__(self, *, window: int = 300, window_s: float = 60.0, alarm_windows: int = 3,
                 learn_frames: int = 1000, emit: Callable[..., Any] = lambda *a, **k: None,
                 on_trial: Callable[[], bool] = lambda: False, store_learned: Callable[[Any, Reference], None] | None = None,
                 capture: Callable[[Any, np.ndarray, list, float, str], None] | None = None,
                 capture_mode: str = "none", low_confidence_e6: int = ref_mod.DEFAULT_LOW_CONFIDENCE_E6) -> None:
        self.window, self.window_s, self.alarm_windows = int(window), float(window_s), int(alarm_windows)
        self.learn_frames = int(learn_frames)
        self._emit, self._on_trial, self._store_learned = emit, on_trial, store_learned
        self._capture = capture if capture_mode in ("low_confidence", "drift") else None
        self._capture_drift = capture_mode == "drift"
        self._low = low_confidence_e6 / 1e6
        self._cur: _Window | None = None
        self._done: collections.deque = collections.deque(maxlen=64)
        self._stride: dict[tuple, int] = {}
        self._learning: dict[str, list] = {"cls": [], "conf": [], "inp": []}
        self._learn_model: Any = None
        self._reported: Any = None  # the model whose first committed window was reported (model.quality)
        self._lock = threading.Lock()  # poll() against figures()
        self._alarm = {m: 0 for m in METRICS}  # consecutive windows over the alarm line
        self.drifting: set[str] = set()
        self.windows = 0
        self.last: dict = {}

    # -- the inference thread ---------------------------------------------------------------
    def on_frame(self, model: Any, frame: np.ndarray, outs: list) -> None:
        w = self._cur
        if w is None or w.model is not model:
            w = self._cur = _Window(model, self.window, self._low)
        o = outs[0]
        i = int(o.argmax())
        conf = o.item(i)  # the max, without a second pass over the output
        w.cls.append(i)
        w.conf.append(conf)
        w.inp.append(self._input_stat(frame))
        cap = self._capture
        if cap is not None:
            if self._capture_drift:
                if self.drifting:
                    cap(model, frame, outs, conf, "drift")
            elif conf < w.low:
                cap(model, frame, outs, conf, "low_confidence")
        n = len(w.conf)
        if n >= w.limit or (n >= 10 and time.monotonic() - w.started >= self.window_s):
            self._done.append(w)
            self._cur = _Window(model, self.window, self._low)

    def _input_stat(self, frame: np.ndarray) -> Any:
        """A pixel frame's mean over about 256 of its pixels; a sensor window's per-channel mean.
        (ufunc reductions and a precomputed divisor: `ndarray.mean` costs twice as much.)"""
        if frame.ndim == 2:
            return _sum(frame, 0) * (1.0 / frame.shape[0])
        if frame.ndim < 2:
            return float(_sum(frame)) / max(1, frame.size)
        k = self._stride.get(frame.shape)
        if k is None:
            s = max(1, int(math.sqrt(frame.shape[0] * frame.shape[1] / 256)))
            n = len(range(0, frame.shape[0], s)) * len(range(0, frame.shape[1], s)) * int(np.prod(frame.shape[2:]))
            k = self._stride[frame.shape] = (s, 1.0 / n)
        return float(_sum(frame[::k[0], ::k[0]], None)) * k[1]

    # -- the telemetry thread ---------------------------------------------------------------
    def poll(self) -> None:
        """Judge every window the inference thread completed since the last call."""
        while self._done:
            self._judge(self._done.popleft())

    def _judge(self, w: _Window) -> None:
        model = w.model
        ref: Reference | None = getattr(model, "reference", None)
        trial = bool(self._on_trial())
        if ref is None:
            if not trial:
                self._learn(model, w)
            with self._lock:
                self.last = {"reference": "none" if trial else "learning", "window": len(w.conf),
                             "low_confidence_pct": self._low_pct(w), "psi_class": None, "psi_confidence": None,
                             "psi_input": None, "drift": []}
            return
        inputs = _channels(w.inp)
        figures: dict[str, Any] = {"reference": ref.source, "window": len(w.conf),
                                   "low_confidence_pct": self._low_pct(w, ref.low_confidence_e6 / 1e6)}
        psis: dict[str, float | None] = {"class": None, "confidence": None, "input": None}
        if ref.classes is not None:
            n = len(ref.classes)
            counts = [0] * n
            for c in w.cls:
                if 0 <= c < n:
                    counts[c] += 1
            psis["class"] = ref_mod.psi(ref.classes, counts)
        psis["confidence"] = ref_mod.psi(ref.confidence.counts, ref_mod.histogram(w.conf, ref.confidence.edges_e6).counts)
        if len(inputs) == len(ref.inputs):
            psis["input"] = max(ref_mod.psi(h.counts, ref_mod.histogram(ch, h.edges_e6).counts)
                                for h, ch in zip(ref.inputs, inputs))
        for m, v in psis.items():
            figures[f"psi_{m}"] = round(v, 4) if v is not None else None
        self._hysteresis(psis, ref, model)
        if not trial and self._reported is not model:  # once per model: its first window after the commit
            self._reported = model
            self._emit("model.quality", reference=ref.source, window=len(w.conf),
                       **{f"psi_{m}": figures[f"psi_{m}"] for m in METRICS})
        with self._lock:
            self.windows += 1
            figures["windows"] = self.windows
            figures["drift"] = sorted(self.drifting)
            self.last = figures

    def _hysteresis(self, psis: dict, ref: Reference, model: Any) -> None:
        alarm, warn = ref.alarm_e6 / 1e6, ref.warn_e6 / 1e6
        version = getattr(model, "version", None)
        for m, v in psis.items():
            if v is None:
                continue
            self._alarm[m] = self._alarm[m] + 1 if v > alarm else 0
            if m not in self.drifting and self._alarm[m] >= self.alarm_windows:
                self.drifting.add(m)
                self._emit("model.drift", metric=m, psi=round(v, 4), alarm=alarm, windows=self._alarm[m],
                           reference=ref.source, **({"version": version} if version is not None else {}))
            elif m in self.drifting and v < warn:
                self.drifting.discard(m)
                self._emit("model.drift_cleared", metric=m, psi=round(v, 4), warn=warn, reference=ref.source)

    def _learn(self, model: Any, w: _Window) -> None:
        if self._learn_model is not model:
            self._learn_model, self._learning = model, {"cls": [], "conf": [], "inp": []}
        L = self._learning
        L["cls"] += w.cls
        L["conf"] += w.conf
        L["inp"] += w.inp
        if len(L["conf"]) < self.learn_frames:
            return
        n_classes = classes_of(model)
        ref = ref_mod.build(L["cls"] if n_classes else None, L["conf"], _channels(L["inp"]), n_classes=n_classes,
                            window=self.window, source="learned", low_confidence_e6=int(self._low * 1e6))
        model.reference = ref
        self._learning = {"cls": [], "conf": [], "inp": []}
        self.drifting.clear()
        self._alarm = {m: 0 for m in METRICS}
        if self._store_learned is not None:
            try:
                self._store_learned(model, ref)
            except OSError as e:  # a full disk: the reference lives in memory until the next start
                log.warning("learned reference not stored: %s", e.strerror or e)
        self._emit("model.reference_learned", frames=ref.frames)

    def _low_pct(self, w: _Window, low: float | None = None) -> float:
        lo = self._low if low is None else low
        return round(100.0 * sum(1 for c in w.conf if c < lo) / len(w.conf), 2) if w.conf else 0.0

    # -- readers ------------------------------------------------------------------------------
    def figures(self) -> dict | None:
        """The `quality` part of telemetry: the last judged window."""
        with self._lock:
            return dict(self.last) if self.last else None


def reference_from(model: Any, frames: Any, **terms: Any) -> Reference:
    """A signed reference's histograms: the model run on representative frames, each frame's
    values taken exactly as `on_frame` takes them on the device."""
    mon = QualityMonitor(window=1 << 62, window_s=float("inf"))
    for f in frames:
        model.preprocess(f)
        model.invoke()
        mon.on_frame(model, f, model.outputs_view())
    w = mon._cur
    if w is None or not w.conf:
        raise ref_mod.ReferenceError_("no frames in the reference data")
    n = classes_of(model)
    return ref_mod.build(w.cls if n else None, w.conf, _channels(w.inp), n_classes=n, **terms)


def classes_of(model: Any) -> int | None:
    """The number of classes of the model's output 0 when it is a classifier's."""
    from edgeagent.state.labels import classes

    outs = getattr(model, "outputs", None) or []
    return classes(outs[0].shape) if outs else None


def _channels(values: list) -> list[list[float]]:
    """Per-frame input statistics (a float, or one per channel) as one list per channel."""
    if not values:
        return [[]]
    if isinstance(values[0], np.ndarray):
        arr = np.asarray(values, dtype=np.float64)
        return [arr[:, i].tolist() for i in range(arr.shape[1])]
    return [list(values)]
