"""Pick the interpreter: ai-edge-litert (LiteRT) first, tflite-runtime as the fallback.

tflite-runtime 2.14 is built against numpy 1.x: with numpy 2 its import fails (or crashes at
first use), and it has no aarch64 wheel for Python 3.11. ai-edge-litert is its maintained
successor with the same Interpreter API, so it is preferred whenever it imports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from edgeagent.errors import ModelError
from edgeagent.record import Record

log = logging.getLogger("edgeagent.engine")

_HINT = {
    "litert": "pip install ai-edge-litert",
    "tflite": "pip install 'edgeagent[tflite]' (tflite-runtime with numpy<2)",
}


@dataclass(frozen=True, eq=False, repr=False)
class Backend(Record):
    """The interpreter module found (ai-edge-litert, else tflite-runtime): both expose
    the same two names, so the rest of the engine never asks which one it has."""

    name: str  # "litert" | "tflite"
    Interpreter: Any
    load_delegate: Any


def _import(name: str) -> Backend:
    if name == "litert":
        from ai_edge_litert import interpreter as mod
    else:
        from tflite_runtime import interpreter as mod  # type: ignore
    return Backend(name, mod.Interpreter, mod.load_delegate)


_cache: dict[str, Backend] = {}


def load_backend(name: str = "auto") -> Backend:
    """The interpreter module for "auto" | "litert" | "tflite"; ModelError if it is missing."""
    if name in _cache:
        return _cache[name]
    order = ["litert", "tflite"] if name == "auto" else [name]
    problems = []
    for cand in order:
        try:
            b = _import(cand)
        except ImportError as e:
            problems.append(f"{cand}: not installed ({_HINT[cand]})" if "No module" in str(e) else f"{cand}: {e}")
            continue
        except (AttributeError, RuntimeError, ValueError) as e:  # tflite-runtime 2.14 under numpy 2
            problems.append(f"{cand}: broken install ({type(e).__name__}: {e}); with tflite-runtime use numpy<2")
            continue
        if name == "auto":
            log.info("inference backend: %s", "ai-edge-litert" if cand == "litert" else "tflite-runtime")
        _cache[name] = b
        return b
    raise ModelError("model.backend_missing", "no inference backend: " + "; ".join(problems))
