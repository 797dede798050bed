"""Pre-switch health check of a candidate model, in a child process.

A model that crashes the interpreter (a bad op, a huge arena, a segfault in a delegate) must not
take the daemon down, so the check runs in a fresh Python process under a memory cap. The child
loads the candidate AND the current model and runs them back to back on each of the same real
recent frames, alternating which goes first: a busy neighbour then slows both halves of a pair,
and the median of the paired ratios is what is judged. The parent only reads one JSON line back.
At a first start (model.initial), before any interpreter or inference thread exists, the child
is a fork of the daemon instead (update/forked.py): numpy is imported already.

The child is a guest on a device that is serving: it takes a lower CPU priority (nice 10,
SCHED_BATCH) before it imports anything, imports nothing but numpy and the interpreter, and dies
with the daemon (PR_SET_PDEATHSIG). (SCHED_IDLE or nice 19 would starve the check on a device at
full load until it times out: a false refusal; nice 10 keeps it a small, fair share.)

Checks: the candidate loads; its input/output signature matches what the pipeline feeds and
reads (unless the manifest's `io` announces exactly the new signature and the real frames can be
adapted to it); outputs are finite; its latency is within max_latency_factor of the current model
(and under the manifest's max_latency_ms when given); and, when the manifest carries a golden
set, enough of its examples pass.
"""

from __future__ import annotations

import base64
import io
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

from edgeagent.runtime.stats import median
from edgeagent.update import forked
from edgeagent.update.cancel import NEVER, Cancel  # light: threading and the error classes only

DEFAULT_MEMORY_LIMIT = 2 << 30  # bytes of data segment for the child
CHILD_NICE = 10  # the serving loop keeps the CPU it needs while a candidate is checked
# The child lowers its priority before it imports anything: the imports (numpy, the interpreter)
# are most of its CPU time, and ran at the daemon's priority when nice came after them.
_BOOT = ("import os\n"
         "try:\n"
         f"    os.nice({CHILD_NICE})\n"
         "    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # CPU-bound, never preempts\n"
         "except (OSError, AttributeError):\n"
         "    pass\n"
         "import runpy\n"
         "runpy.run_module('edgeagent.update.health', run_name='__main__', alter_sys=True)\n")
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
    factor: float | None = None  # median of the paired candidate/baseline invoke ratios (wall clock)
    cpu_factor: float | None = None  # the same in CPU time
    frames: int = 0
    golden: dict | None = None  # {"examples", "passed", "pass_pct", "min_pass_pct", "mode"}
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
    golden: dict | None = None  # the manifest's health.golden {"npz_b64", "min_pass_pct", "tol_e6"}
    delegate: dict | None = None  # engine.spec.DelegateSpec.to_dict(): judged on the execution it is served on


def _sig_of(model: Any) -> dict:
    return model.io_signature()


def _shapes(sig: dict, side: str) -> list[tuple]:
    return [(tuple(t["shape"]), t["dtype"]) for t in sig.get(side, [])]


# At least this many pairs are timed (frames are cycled): a few preempted pairs cannot move the median.
MIN_PAIRS = 15


def _timed_invoke(model: Any, frame: np.ndarray) -> tuple[float, float, bool]:
    """(wall ms, CPU ms, outputs finite) of one invoke. The child does nothing else, so its
    process CPU time is the model's compute, which a busy neighbour cannot inflate."""
    model.preprocess(frame)
    t, c = time.perf_counter(), time.process_time()
    model.invoke()
    ms, cpu = (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3
    return ms, cpu, all(bool(np.isfinite(o).all()) for o in model.outputs_view())


def _paired_invokes(cand: Any, base: Any | None, frames: list[np.ndarray], runs: int) -> tuple[list, list, bool]:
    """Candidate and baseline back to back on each frame, alternating which goes first, so both
    halves of a pair share the conditions of that instant. Returns (cand, base, finite), each
    time a (wall ms, CPU ms) pair."""
    cand_t: list[tuple[float, float]] = []
    base_t: list[tuple[float, float]] = []
    finite = True
    i = 0
    n = max(runs * len(frames), MIN_PAIRS if base is not None else 0)
    for k in range(n):
        f = frames[k % len(frames)]
        if base is not None and i % 2:
            base_t.append(_timed_invoke(base, f)[:2])
        ms, cpu, ok = _timed_invoke(cand, f)
        cand_t.append((ms, cpu))
        finite = finite and ok
        if base is not None and not i % 2:
            base_t.append(_timed_invoke(base, f)[:2])
        i += 1
    return cand_t, base_t, finite


def _median_ratio(a: list[float], b: list[float]) -> float:
    return median(x / max(y, 1e-6) for x, y in zip(a, b))


MAX_GOLDEN_EXAMPLES = 10_000


def load_golden(npz_b64: str, in_spec: Any, out_spec: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """The golden set: (inputs, expected, "labels" | "outputs"); ValueError says what is wrong."""
    raw = base64.b64decode(npz_b64, validate=True)
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        names = set(z.files)
        if "inputs" not in names or len(names & {"labels", "outputs"}) != 1:
            raise ValueError(f"the npz must hold 'inputs' and one of 'labels' or 'outputs' (has {sorted(names)})")
        inputs = z["inputs"]
        mode = "labels" if "labels" in names else "outputs"
        expected = z[mode]
    want_in = tuple(in_spec.shape[1:])
    if inputs.ndim < 1 or tuple(inputs.shape[1:]) != want_in or inputs.dtype != in_spec.dtype:
        raise ValueError(f"inputs are {inputs.dtype} {list(inputs.shape)}, the model takes "
                         f"{np.dtype(in_spec.dtype)} [N, {', '.join(map(str, want_in))}]")
    n = inputs.shape[0]
    if not 1 <= n <= MAX_GOLDEN_EXAMPLES:
        raise ValueError(f"{n} examples (1 to {MAX_GOLDEN_EXAMPLES})")
    if mode == "labels":
        if expected.shape != (n,) or not np.issubdtype(expected.dtype, np.integer):
            raise ValueError(f"labels must be {n} integers, got {expected.dtype} {list(expected.shape)}")
    elif tuple(expected.shape) != (n, *out_spec.shape[1:]) or not np.issubdtype(expected.dtype, np.number):
        raise ValueError(f"outputs are {list(expected.shape)}, output 0 is [N, {', '.join(map(str, out_spec.shape[1:]))}]")
    return inputs, expected, mode


def run_golden(model: Any, golden: dict) -> dict:
    """Run every golden example; an example passes when the argmax of output 0 is its label, or
    when output 0 is within tol_e6/1e6 of the expected output (relative and absolute)."""
    inputs, expected, mode = load_golden(golden["npz_b64"], model.inputs[0], model.outputs[0])
    tol = int(golden.get("tol_e6", 1000)) / 1e6
    passed = 0
    for x, want in zip(inputs, expected):
        model.preprocess(x)  # same shape and dtype as input 0: a straight copy
        model.invoke()
        out = model.outputs_view()[0][0]
        if mode == "labels":
            passed += int(int(np.argmax(out)) == int(want))
        else:
            passed += int(np.allclose(out, want, rtol=tol, atol=tol))
    n = len(inputs)
    return {"examples": n, "passed": passed, "pass_pct": round(100.0 * passed / n, 2),
            "min_pass_pct": int(golden["min_pass_pct"]), "mode": mode}


def run_checks(req: HealthRequest) -> HealthResult:
    """The checks themselves (runs in the child)."""
    from edgeagent.engine.model import Model
    from edgeagent.errors import EdgeAgentError

    t0 = time.monotonic()
    kw = dict(backend=req.backend, num_threads=req.num_threads, input_mean=req.input_mean, input_std=req.input_std,
              delegate=req.delegate)
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
        cand_t, base_t, finite = _paired_invokes(cand, base, frames, req.runs)
    except EdgeAgentError as e:
        return HealthResult(False, "health.invoke_failed", e.message, io=sig)
    cand_ms, cand_cpu = [t[0] for t in cand_t], [t[1] for t in cand_t]
    lat = median(cand_ms)
    if not finite:
        return HealthResult(False, "health.nonfinite", "outputs contain NaN or Inf on real inputs", latency_ms=lat, io=sig)
    res = HealthResult(True, latency_ms=round(lat, 3), frames=len(frames), io=sig)
    if base is not None:
        base_ms, base_cpu = [t[0] for t in base_t], [t[1] for t in base_t]
        blat = median(base_ms)
        res.baseline_ms = round(blat, 3)
        res.factor = round(_median_ratio(cand_ms, base_ms), 3)
        res.cpu_factor = round(_median_ratio(cand_cpu, base_cpu), 3)
        # Too slow only when the wall-clock AND the CPU-time ratios say so: at nice 10 on a busy
        # device the child is preempted inside invokes, which inflates wall time but not CPU
        # time. (A delegate's wait is not CPU time: probation, with wall-clock pairs in the
        # serving loop, judges those.)
        if min(res.factor, res.cpu_factor) > req.max_latency_factor and lat - blat > LATENCY_NOISE_MS:
            res.ok, res.code = False, "health.too_slow"
            res.reason = (f"invoke {lat:.2f} ms vs {blat:.2f} ms for the current model on the same frames, median "
                          f"paired ratio {res.factor:.2f} ({res.cpu_factor:.2f} in CPU time; "
                          f"limit {req.max_latency_factor}x)")
    if res.ok and req.max_latency_ms is not None and lat > req.max_latency_ms:
        res.ok, res.code = False, "health.too_slow"
        res.reason = f"invoke {lat:.2f} ms exceeds the manifest's max_latency_ms {req.max_latency_ms}"
    if res.ok and req.golden:
        try:
            res.golden = run_golden(cand, req.golden)
        except (ValueError, KeyError, OSError) as e:  # a bad npz (zip, dtype, shape) is the publisher's fault
            res.ok, res.code, res.reason = False, "health.golden_invalid", f"golden set: {str(e)[:300]}"
        except EdgeAgentError as e:
            res.ok, res.code, res.reason = False, "health.invoke_failed", f"golden set: {e.message}"
        else:
            g = res.golden
            if g["pass_pct"] < g["min_pass_pct"]:
                res.ok, res.code = False, "health.golden_failed"
                res.reason = (f"{g['passed']} of {g['examples']} golden examples pass ({g['pass_pct']}%, "
                              f"min {g['min_pass_pct']}%)")
    res.seconds = round(time.monotonic() - t0, 3)
    return res


def frames_file_bytes(frames: list[np.ndarray]) -> int:
    """What the frames file of a check will take on disk (counted in the update's space check)."""
    return sum(int(f.nbytes) + 256 for f in frames) + 1024


def check_in_process(req: HealthRequest, frames: list[np.ndarray], *, workdir: Path,
                     cancel: Cancel = NEVER) -> HealthResult:
    """The same checks on the calling thread, for an exclusive accelerator (a Coral: one process
    may hold it, with several interpreters): the isolation of a child is lost, so a model that
    crashes the interpreter takes the daemon down, and the restart during the update counts as a
    failed attempt (the trial-restart rule rolls it back). No memory cap, no timeout, no nice."""
    cancel.check()
    t0 = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix="health-", suffix=".npz", delete=False) as fh:
        frames_file = fh.name
        if frames:
            np.savez(fh, **{f"f_{i}": f for i, f in enumerate(frames)})
    try:
        res = run_checks(HealthRequest(**{**asdict(req), "frames_file": frames_file}))
    except MemoryError:
        res = HealthResult(False, "health.out_of_memory", "the model does not fit in memory")
    finally:
        os.unlink(frames_file)
    cancel.check()
    res.seconds = round(time.monotonic() - t0, 3)
    return res


def check(req: HealthRequest, frames: list[np.ndarray], *, timeout_s: float, workdir: Path,
          cancel: Cancel = NEVER, fork: bool = False) -> HealthResult:
    """Run the checks in a child process; any way the child dies is a failed check. A cancel
    kills the child at once (update.cancelled). fork: a fork of this process instead of a fresh
    Python when no interpreter was ever loaded here (a first start), else a fresh one."""
    if req.delegate and req.delegate.get("exclusive"):
        return check_in_process(req, frames, workdir=workdir, cancel=cancel)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.NamedTemporaryFile(dir=workdir, prefix="health-", suffix=".npz", delete=False) as fh:
        frames_file = fh.name
        try:
            if frames:
                np.savez(fh, **{f"f_{i}": f for i, f in enumerate(frames)})
        except BaseException:
            fh.close()
            os.unlink(frames_file)
            raise
    req = HealthRequest(**{**asdict(req), "frames_file": frames_file})
    try:
        if fork and not _interpreter_loaded():
            proc: Any = forked.ForkedChild(lambda: _run_capped(req), nice=CHILD_NICE)
        else:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                # same session: with autogroup scheduling a new session would be a new group, and
                # the child's nice would no longer yield to the serving loop
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        data: bytes | None = json.dumps(asdict(req)).encode()
        end = t0 + timeout_s
        with cancel.hook(proc.kill):
            while True:
                try:
                    out, err = proc.communicate(data, timeout=max(0.01, min(0.5, end - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    data = None  # sent with the first call
                    if cancel.is_set:
                        proc.kill()
                        proc.communicate()
                        cancel.check()
                    if time.monotonic() >= end:
                        proc.kill()
                        proc.communicate()
                        return HealthResult(False, "health.timeout", f"no answer within {timeout_s:.0f} s")
        cancel.check()
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


def _interpreter_loaded() -> bool:
    """A fork copies an interpreter's thread pool without its threads: only a process that never
    loaded one may fork for a check (else the fresh child, as for an update)."""
    return any(m in sys.modules for m in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"))


def _child() -> int:
    if len(sys.argv) > 1:
        forked.die_with_parent(int(sys.argv[1]))
    sys.stdout.write(_run_capped(HealthRequest(**json.loads(sys.stdin.read()))).decode())
    sys.stdout.flush()
    return 0


def _run_capped(req: HealthRequest) -> bytes:
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
    return (json.dumps(res.to_dict()) + "\n").encode()


if __name__ == "__main__":
    raise SystemExit(_child())
