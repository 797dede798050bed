"""The one interface every input source implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Source(Protocol):
    """A source of frames. read() raises SourceError (with a stable code) when it cannot deliver;
    the ResilientSource wrapper turns that into retries with backoff."""

    name: str

    def open(self) -> None: ...

    def read(self) -> np.ndarray: ...

    def close(self) -> None: ...
