"""The loop's latency percentiles: numpy's linear method, computed without numpy.ma."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgeagent.runtime.stats import percentiles
from tests.support.daemon import REPO


@pytest.mark.parametrize("n", [1, 2, 3, 10, 777, 2048])
def test_percentiles_match_numpys_default_method(n):
    x = np.random.default_rng(n).random(n) * 10
    assert percentiles(x, (0, 50, 95, 99, 100)) == pytest.approx(list(np.percentile(x, (0, 50, 95, 99, 100))), abs=1e-12)


def test_a_window_summary_does_not_import_numpy_ma():
    probe = ("import sys; from edgeagent.runtime.stats import LatencyWindow; w = LatencyWindow(64)\n"
             "for i in range(100): w.record(0.1 * i, 1.0, 0.2)\n"
             "s = w.window(); print(s['latency_ms']['p50'], 'numpy.ma' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    p50, imported = out.stdout.split()
    assert imported == "False" and float(p50) > 0, out.stdout
