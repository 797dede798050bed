"""The telemetry thread's windows (service/reporter.py), with a collector that records them."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from edgeagent.config import from_dict
from edgeagent.service.reporter import Reporter


class Windows:
    """Records when each CPU window began and when each sample closed one."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []
        self.sampled = threading.Event()

    def begin_window(self) -> None:
        self.marks.append(("begin", time.monotonic()))

    def collect(self, **_kw) -> dict:
        self.marks.append(("sample", time.monotonic()))
        if sum(1 for kind, _ in self.marks if kind == "sample") >= 2:
            self.sampled.set()
        return {}


def _reporter(windows: Windows) -> Reporter:
    host = SimpleNamespace(loop=SimpleNamespace(model=None, snapshot=dict),
                           model_info={"name": "m", "version": 1, "slot": "a"})
    return Reporter(config=lambda: from_dict({"telemetry": {"interval_s": 0.5}}), collector=lambda: windows,
                    host=host, notifier=SimpleNamespace(status=lambda line: None), transport=lambda: None,
                    outputs=lambda: None, metrics=lambda: None, discovery=lambda: None)


def test_a_new_model_seen_before_ready_does_not_cut_the_first_window_short():
    """The served model is set (a refresh: sample half a second later) before READY=1; on a busy
    device READY came more than half a second later, so the first sample closed a window of a few
    ms and CPU time, counted in 10 ms ticks, read 0% or 400% of a core."""
    windows = Windows()
    reporter, ready = _reporter(windows), threading.Event()
    reporter.refresh()  # the model is loaded and set ...
    reporter.start(ready)
    time.sleep(0.6)  # ... and the first frame comes more than half a second later
    ready.set()
    try:
        assert windows.sampled.wait(5)
    finally:
        reporter.stop()
    (first, begun), (second, first_at), (_, second_at) = windows.marks[:3]
    assert (first, second) == ("begin", "sample")
    assert first_at - begun >= 0.49, windows.marks
    # then on the interval's beat from READY (no drift), never closer than half of it (no burst)
    assert second_at - first_at >= 0.24, windows.marks

