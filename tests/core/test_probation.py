"""The probation judge decides commit / rollback / continue from what the model on trial did."""

from edgeagent.update.probation import Limits, judge

L = Limits(probation_s=10, min_inferences=20, max_latency_factor=2.0)


def c(frames=30, errors=0, nonfinite=0, p50=1.0, last_error=""):
    return {"frames": frames, "errors": errors, "nonfinite": nonfinite, "invoke_p50_ms": p50, "last_error": last_error}


def test_commits_only_after_time_and_inferences():
    assert judge(c(frames=30), 1.0, L, elapsed_s=9.9).decision == "continue"
    assert judge(c(frames=19), 1.0, L, elapsed_s=60).decision == "continue"
    assert judge(c(frames=20), 1.0, L, elapsed_s=10).decision == "commit"


def test_any_error_or_nan_rolls_back_at_once():
    v = judge(c(errors=1, last_error="model.invoke_failed: boom"), 1.0, L, elapsed_s=0.1)
    assert v.decision == "rollback" and "boom" in v.reason
    assert judge(c(nonfinite=1), 1.0, L, elapsed_s=0.1).decision == "rollback"


def test_latency_regression_needs_enough_frames():
    assert judge(c(frames=5, p50=10.0), 1.0, L, elapsed_s=1).decision == "continue"
    v = judge(c(frames=10, p50=2.5), 1.0, L, elapsed_s=1)
    assert v.decision == "rollback" and "latency" in v.reason
    assert judge(c(frames=10, p50=1.9), 1.0, L, elapsed_s=1).decision == "continue"
    # microsecond models: a 3x ratio of 0.003 ms is timer noise, not a regression
    assert judge(c(frames=10, p50=0.009), 0.003, L, elapsed_s=1).decision == "continue"


def test_manifest_max_latency_ms():
    lim = Limits(probation_s=1, min_inferences=1, max_latency_factor=10, max_latency_ms=0.5)
    assert judge(c(frames=10, p50=0.6), None, lim, elapsed_s=2).decision == "rollback"
