"""A model's quality reference: what its predictions and inputs looked like on representative data.

Three histograms, as integer counts (the canonical JSON of a signed manifest has integers only):
the predicted class (argmax of a classifier's output 0), the top confidence (max of output 0, in
bins whose edges are given in millionths), and an input statistic (the mean of a pixel frame, or
each channel's mean of a sensor window). The device compares each window of live frames against
them with the population stability index (PSI). A reference is signed into the manifest
(`signed.monitor`) or learned on the device after a commit; either way it is stored beside the
model in its slot (`reference.json`), so it switches and rolls back with the model.
Pure: parsing, building from values, PSI; no engine, no I/O but the file.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgeagent.record import Record
from edgeagent.state.atomic import atomic_write

FILE = "reference.json"
MAX_BINS = 1024
DEFAULT_WARN_E6 = 100_000  # PSI 0.1: the usual "some shift" line
DEFAULT_ALARM_E6 = 250_000  # PSI 0.25: the usual "significant shift" line
DEFAULT_LOW_CONFIDENCE_E6 = 500_000
EPS = 1e-4  # smoothing: an empty bin on either side must not make the PSI infinite
BINS = 10  # quantile bins for a histogram built from data


class ReferenceError_(ValueError):
    """Not a reference: one line, for the caller's code."""


@dataclass(frozen=True, eq=False, repr=False)
class Histogram(Record):
    """Integer counts and edges in millionths: a signed manifest's canonical JSON holds integers only."""

    edges_e6: tuple[int, ...]  # ascending bin edges in millionths; len(counts) == len(edges) + 1
    counts: tuple[int, ...]

    def to_json(self) -> dict:
        return {"edges_e6": list(self.edges_e6), "counts": list(self.counts)}


@dataclass(frozen=True, eq=False, repr=False)
class Reference(Record):
    """What a model's outputs and inputs looked like when it was known good; live windows are
    compared against it (PSI) to see drift."""

    frames: int  # how many frames the histograms were built from
    window: int  # frames per live window the device compares
    warn_e6: int
    alarm_e6: int
    low_confidence_e6: int
    confidence: Histogram
    inputs: tuple[Histogram, ...]  # one per input channel (one for a pixel frame's mean)
    classes: tuple[int, ...] | None = None  # counts per class; None when output 0 is no classifier's
    source: str = "signed"  # "signed" (in the manifest) or "learned" (on the device)

    def to_json(self) -> dict:
        d: dict[str, Any] = {"frames": self.frames, "window": self.window, "warn_psi_e6": self.warn_e6,
                             "alarm_psi_e6": self.alarm_e6, "low_confidence_e6": self.low_confidence_e6,
                             "confidence": self.confidence.to_json(), "input": [h.to_json() for h in self.inputs]}
        if self.classes is not None:
            d["class"] = list(self.classes)
        return d


def _int(v: Any, path: str, lo: int = 0, hi: int = 2**53) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ReferenceError_(f"{path}: expected an integer {lo}..{hi}")
    return v


def _counts(v: Any, path: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_BINS:
        raise ReferenceError_(f"{path}: expected a list of 1 to {MAX_BINS} counts")
    return tuple(_int(c, f"{path}[{i}]") for i, c in enumerate(v))


def _hist(v: Any, path: str) -> Histogram:
    if not isinstance(v, dict) or set(v) != {"edges_e6", "counts"}:
        raise ReferenceError_(f"{path}: expected {{\"edges_e6\": [...], \"counts\": [...]}}")
    counts = _counts(v["counts"], f"{path}.counts")
    e = v["edges_e6"]
    if not isinstance(e, list) or len(e) != len(counts) - 1:
        raise ReferenceError_(f"{path}.edges_e6: expected one edge fewer than counts")
    edges = tuple(_int(x, f"{path}.edges_e6[{i}]", -2**53) for i, x in enumerate(e))
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ReferenceError_(f"{path}.edges_e6: expected ascending edges")
    return Histogram(edges, counts)


def parse(v: Any, source: str = "signed") -> Reference:
    """A reference from its JSON (`signed.monitor`, or a slot's reference.json), strictly."""
    keys = {"frames", "window", "warn_psi_e6", "alarm_psi_e6", "low_confidence_e6", "confidence", "input"}
    if not isinstance(v, dict) or not keys <= set(v) or not set(v) <= keys | {"class", "source"}:
        raise ReferenceError_(f"expected the keys {', '.join(sorted(keys))} (and class)")
    warn, alarm = _int(v["warn_psi_e6"], "warn_psi_e6", 1), _int(v["alarm_psi_e6"], "alarm_psi_e6", 1)
    if alarm < warn:
        raise ReferenceError_("alarm_psi_e6: below warn_psi_e6")
    inputs = v["input"]
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= 64:
        raise ReferenceError_("input: expected a list of 1 to 64 histograms")
    classes = _counts(v["class"], "class") if "class" in v else None
    return Reference(_int(v["frames"], "frames", 1), _int(v["window"], "window", 10, 10**6), warn, alarm,
                     _int(v["low_confidence_e6"], "low_confidence_e6", 0, 10**6), _hist(v["confidence"], "confidence"),
                     tuple(_hist(h, f"input[{i}]") for i, h in enumerate(inputs)), classes, source)


def quantile_edges(values: Sequence[float], bins: int = BINS) -> tuple[int, ...]:
    """Bin edges (millionths) that split the values into about equal parts: each bin of the
    reference holds data, so a shift shows wherever it goes."""
    vals = sorted(values)
    if not vals:
        return ()
    edges: list[int] = []
    for i in range(1, bins):
        e = round(vals[min(len(vals) - 1, (i * len(vals)) // bins)] * 1e6)
        if not edges or e > edges[-1]:
            edges.append(e)
    if len(edges) == 1 and edges[0] == round(vals[0] * 1e6):
        edges.append(edges[0] + 1)  # all values equal: one bin below, one above
    return tuple(edges)


def histogram(values: Sequence[float], edges_e6: Sequence[int]) -> Histogram:
    edges = [e / 1e6 for e in edges_e6]
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect.bisect_right(edges, v)] += 1
    return Histogram(tuple(edges_e6), tuple(counts))


def build(classes: Sequence[int] | None, confidences: Sequence[float], inputs: Sequence[Sequence[float]], *,
          n_classes: int | None, window: int = 300, warn_e6: int = DEFAULT_WARN_E6, alarm_e6: int = DEFAULT_ALARM_E6,
          low_confidence_e6: int = DEFAULT_LOW_CONFIDENCE_E6, source: str = "signed") -> Reference:
    """A reference from per-frame values: the predicted classes (None when output 0 is no
    classifier's), the top confidences, and per channel the input statistic of each frame."""
    if not confidences:
        raise ReferenceError_("no frames to build a reference from")
    class_counts = None
    if classes is not None and n_classes:
        cc = [0] * n_classes
        for c in classes:
            cc[int(c)] += 1
        class_counts = tuple(cc)
    conf = histogram(confidences, quantile_edges(confidences))
    ins = tuple(histogram(ch, quantile_edges(ch)) for ch in inputs)
    return Reference(len(confidences), window, warn_e6, alarm_e6, low_confidence_e6, conf, ins, class_counts, source)


def psi(ref_counts: Sequence[int], live_counts: Sequence[int]) -> float:
    """Population stability index of the live counts against the reference, smoothed."""
    rt, lt = sum(ref_counts), sum(live_counts)
    if not rt or not lt or len(ref_counts) != len(live_counts):
        return 0.0
    total = 0.0
    for r, c in zip(ref_counts, live_counts):
        p, q = max(r / rt, EPS), max(c / lt, EPS)
        total += (q - p) * math.log(q / p)
    return total


def beside(model_path: str | os.PathLike) -> Path:
    return Path(model_path).parent / FILE


def load_beside(model_path: str | os.PathLike) -> Reference | None:
    """The reference stored beside a slot's model, None when it has none or it is damaged."""
    p = beside(model_path)
    try:
        d = json.loads(p.read_text())
        return parse({k: v for k, v in d.items() if k != "source"}, d.get("source", "signed"))
    except (OSError, ValueError, ReferenceError_):
        return None


def write_beside(model_path: str | os.PathLike, ref: Reference | None, mode: int = 0o444) -> None:
    """Store a reference beside a slot's model (durably), or remove a stale one."""
    p = beside(model_path)
    if ref is None:
        p.unlink(missing_ok=True)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, (json.dumps({**ref.to_json(), "source": ref.source}, sort_keys=True) + "\n").encode(), mode=mode)
