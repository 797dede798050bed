"""The loop's latency percentiles: numpy's linear method, computed without numpy.ma; medians
without the statistics module."""

from __future__ import annotations

import statistics
import subprocess
import sys

import numpy as np
import pytest

from edgeagent.runtime.stats import median, percentiles
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


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 1001])
def test_median_matches_the_statistics_module(n):
    x = list(np.random.default_rng(n).random(n) * 10)
    assert median(x) == statistics.median(x) and median(iter(x)) == statistics.median(x)
    with pytest.raises(ValueError):
        median([])


def test_the_loop_and_the_health_check_leave_the_statistics_module_out():
    """statistics loads decimal and fractions: 0.6 MiB of a daemon's RSS for a median."""
    probe = "import sys, edgeagent.runtime.loop, edgeagent.update.health; print('statistics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
