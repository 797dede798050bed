"""The shape of a model's tensors, shared by the engine and the input sources; and the external
delegate a model runs on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.record import Record


@dataclass(frozen=True, eq=False, repr=False)
class TensorSpec(Record):
    """One input or output tensor as the interpreter reports it."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0  # 0.0 = not quantised
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": np.dtype(self.dtype).name}


# Libraries that only one process may open at a time (a Coral's libedgetpu over USB or PCIe): the
# health check runs in the daemon on a second interpreter, never in a child process.
SINGLE_OPEN = ("libedgetpu",)


@dataclass(frozen=True, eq=False, repr=False)
class DelegateSpec(Record):
    """An external delegate as every part that loads a model uses it: the same library and options
    for the serving model, the health check, the golden set, the shadow, bench and the rollback
    pre-check, so a model is judged on the execution it is served on."""

    library: str
    options: tuple[tuple[str, str], ...] = ()
    fallback: str = "fail"  # "fail": the load fails (model.delegate_failed); "cpu": serve on the CPU
    exclusive: bool = False  # one process only: check in the daemon, no shadow pairs
    name: str = ""  # what a manifest's requires.delegate names

    @classmethod
    def of(cls, cfg: Any) -> "DelegateSpec | None":
        """From `[model] delegate` (a library path, or the table), a dict (a health request), or None."""
        if cfg is None or isinstance(cfg, DelegateSpec):
            return cfg
        if isinstance(cfg, str):
            cfg = {"library": cfg}
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        library = get("library", "") or ""
        if not library:
            return None
        options = get("options", None) or {}
        pairs = tuple(sorted((str(k), str(v)) for k, v in (options.items() if isinstance(options, dict) else options)))
        excl = get("exclusive", "auto")
        exclusive = any(Path(library).name.startswith(s) for s in SINGLE_OPEN) if excl in ("auto", None) else bool(excl)
        return cls(library, pairs, get("fallback", "fail") or "fail", exclusive, get("name", "") or name_of(library))

    def to_dict(self) -> dict:
        return {"library": self.library, "options": dict(self.options), "fallback": self.fallback,
                "exclusive": self.exclusive, "name": self.name}


def name_of(library: str) -> str:
    """`libedgetpu.so.1` -> `edgetpu`, `/usr/lib/libteflon.so` -> `teflon`."""
    base = Path(library).name.split(".so")[0].split(".dll")[0]
    return base[3:] if base.startswith("lib") else base
