"""Pre-switch health check of a candidate model, in a child process.

A model that crashes the interpreter (a bad op, a huge arena, a segfault in a delegate) must not
take the daemon down, so the check runs in a fresh Python process under a memory cap. The child
loads the candidate AND the current model and alternates invokes on the same real recent frames:
comparing the two there, under the same conditions, is fairer than comparing against the figures
of the live loop. The parent only reads one JSON line back.

Checks: the candidate loads; its input/output signature matches what the pipeline feeds and
reads (unless the manifest's `io` announces exactly the new signature and the real frames can be
adapted to it); outputs are finite; its latency is within max_latency_factor of the current model
(and under the manifest's max_latency_ms when given).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MEMORY_LIMIT = 2 << 30  # bytes of data segment for the child
# A latency regression must also exceed this many ms: for µs-scale models, scheduling noise
# alone makes ratios of 2x and more.
LATENCY_NOISE_MS = 0.2


@dataclass
class HealthResult:
    ok: bool
    code: str = ""  # health.* when not ok
    reason: str = ""
    latency_ms: float | None = None
    baseline_ms: float | None = None
    factor: float | None = None
    frames: int = 0
    io: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HealthRequest:
    candidate: str
    baseline: str | None  # the model serving now (None on first install)
    frames_file: str  # .npy of stacked recent frames (or empty)
    manifest_io: dict | None
    max_latency_factor: float
    max_latency_ms: float | None
    backend: str = "auto"
    num_threads: int = 0
    input_mean: float = 0.0
    input_std: float = 255.0
    runs: int = 3
    memory_limit: int = DEFAULT_MEMORY_LIMIT


def _sig_of(model: Any) -> dict:
    return model.io_signature()


def _shapes(sig: dict, side: str) -> list[tuple]:
    return [(tuple(t["shape"]), t["dtype"]) for t in sig.get(side, [])]


def _median_invoke(model: Any, frames: list[np.ndarray], runs: int) -> tuple[float, bool]:
    times = []
    finite = True
    for _ in range(runs):
        for f in frames:
            model.preprocess(f)
            t = time.perf_counter()
            model.invoke()
            times.append((time.perf_counter() - t) * 1e3)
            for o in model.outputs_view():
                if not np.isfinite(o).all():
                    finite = False
    return float(np.median(times)), finite


def run_checks(req: HealthRequest) -> HealthResult:
    """The checks themselves (runs in the child)."""
    from edgeagent.engine.model import Model
    from edgeagent.errors import EdgeAgentError

    t0 = time.monotonic()
    kw = dict(backend=req.backend, num_threads=req.num_threads, input_mean=req.input_mean, input_std=req.input_std)
    try:
        cand = Model.load(req.candidate, **kw)
    except EdgeAgentError as e:
        return HealthResult(False, "health.load_failed", e.message)
    sig = _sig_of(cand)
    frames: list[np.ndarray] = []
    if req.frames_file and os.path.getsize(req.frames_file):
        with np.load(req.frames_file, allow_pickle=False) as z:
            frames = [z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))]
    base = Model.load(req.baseline, **kw) if req.baseline else None
    if base is not None:
        bsig = _sig_of(base)
        announced = req.manifest_io is not None and _shapes(req.manifest_io, "inputs") == _shapes(sig, "inputs") \
            and _shapes(req.manifest_io, "outputs") == _shapes(sig, "outputs")
        for side in ("inputs", "outputs"):
            if _shapes(sig, side) != _shapes(bsig, side) and not announced:
                return HealthResult(False, "health.io_mismatch",
                                    f"{side} {_shapes(sig, side)} differ from the running model's {_shapes(bsig, side)}"
                                    " and the manifest's io does not announce it", io=sig)
    if not frames:  # no real input yet (offline install): zeros of the model's own input
        spec = cand.inputs[0]
        frames = [np.zeros(spec.shape, dtype=spec.dtype)]
    try:
        for f in frames[:1]:  # warm up both (XNNPACK's first invoke is slow)
            cand.preprocess(f)
            cand.invoke()
            if base is not None:
                base.preprocess(f)
                base.invoke()
        lat, finite = _median_invoke(cand, frames, req.runs)
    except EdgeAgentError as e:
        return HealthResult(False, "health.invoke_failed", e.message, io=sig)
    if not finite:
        return HealthResult(False, "health.nonfinite", "outputs contain NaN or Inf on real inputs", latency_ms=lat, io=sig)
    res = HealthResult(True, latency_ms=round(lat, 3), frames=len(frames), io=sig)
    if base is not None:
        blat, _ = _median_invoke(base, frames, req.runs)
        res.baseline_ms = round(blat, 3)
        res.factor = round(lat / max(blat, 1e-6), 3)
        if res.factor > req.max_latency_factor and lat - blat > LATENCY_NOISE_MS:
            res.ok, res.code = False, "health.too_slow"
            res.reason = f"invoke {lat:.2f} ms is {res.factor:.1f}x the current {blat:.2f} ms (limit {req.max_latency_factor}x)"
    if res.ok and req.max_latency_ms is not None and lat > req.max_latency_ms:
        res.ok, res.code = False, "health.too_slow"
        res.reason = f"invoke {lat:.2f} ms exceeds the manifest's max_latency_ms {req.max_latency_ms}"
    res.seconds = round(time.monotonic() - t0, 3)
    return res


def check(req: HealthRequest, frames: list[np.ndarray], *, timeout_s: float, workdir: Path) -> HealthResult:
    """Run the checks in a child process; any way the child dies is a failed check."""
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.NamedTemporaryFile(dir=workdir, suffix=".npz", delete=False) as fh:
        if frames:
            np.savez(fh, **{f"f_{i}": f for i, f in enumerate(frames)})
        frames_file = fh.name
    req = HealthRequest(**{**asdict(req), "frames_file": frames_file})
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeagent.update.health"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
        )
        try:
            out, err = proc.communicate(json.dumps(asdict(req)).encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return HealthResult(False, "health.timeout", f"no answer within {timeout_s:.0f} s")
    finally:
        os.unlink(frames_file)
    secs = round(time.monotonic() - t0, 3)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return HealthResult(False, "health.crashed", f"the model killed the checking process ({name})", seconds=secs)
    lines = [l for l in out.decode(errors="replace").splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1][:300]
        return HealthResult(False, "health.crashed", f"checking process exited {proc.returncode}: {tail}", seconds=secs)
    res = HealthResult(**json.loads(lines[-1]))
    res.seconds = secs
    return res


def _child() -> int:
    req = HealthRequest(**json.loads(sys.stdin.read()))
    if req.memory_limit:
        # RLIMIT_DATA caps heap and private mappings (Linux >= 4.7): a model that asks for a
        # huge tensor arena fails here instead of pushing the device into the OOM killer.
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        lim = req.memory_limit if hard == resource.RLIM_INFINITY else min(req.memory_limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (lim, hard))
    try:
        res = run_checks(req)
    except MemoryError:
        res = HealthResult(False, "health.out_of_memory", f"the model needs more than {req.memory_limit >> 20} MiB")
    sys.stdout.write(json.dumps(res.to_dict()) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
