"""The probation judge decides commit / rollback / continue from what the model on trial did,
measured against the previous model on the same frames."""

from edgeagent.update.probation import MIN_PAIRS, Limits, judge, stall_limit_s

L = Limits(probation_s=10, min_inferences=20, max_latency_factor=2.0, stall_s=2.0)


def c(frames=30, errors=0, nonfinite=0, p50=1.0, last_error=""):
    return {"frames": frames, "errors": errors, "nonfinite": nonfinite, "invoke_p50_ms": p50, "last_error": last_error}


def sh(pairs, new, old, agreed=None, compared=0):
    """A Shadow.summary() of `pairs` pairs, each (new ms, old ms)."""
    import numpy as np

    pairs_list = list(pairs) if not isinstance(pairs, int) else [(new, old)] * pairs
    n = np.array([p[0] for p in pairs_list])
    o = np.array([p[1] for p in pairs_list])
    return {"pairs": len(pairs_list), "compared": compared, "agreed": agreed or 0, "errors": 0, "last_error": None,
            "ratio": float(np.median(n / o)) if len(n) else None,
            "new_p50_ms": float(np.median(n)) if len(n) else None, "old_p50_ms": float(np.median(o)) if len(o) else None}


def test_commits_only_after_time_inferences_and_enough_pairs():
    ok = sh(MIN_PAIRS, 1.0, 1.0)
    assert judge(c(frames=30), ok, L, elapsed_s=9.9).decision == "continue"
    assert judge(c(frames=19), ok, L, elapsed_s=60).decision == "continue"
    assert judge(c(frames=20), ok, L, elapsed_s=10).decision == "commit"
    # time and inferences are there, but too few paired frames to judge latency: wait
    assert judge(c(frames=20), sh(MIN_PAIRS - 1, 1.0, 1.0), L, elapsed_s=10).decision == "continue"
    # without a shadow (the previous model did not load after a restart) the counters decide
    assert judge(c(frames=20), None, L, elapsed_s=10).decision == "commit"


def test_any_error_or_nan_rolls_back_at_once():
    v = judge(c(errors=1, last_error="model.invoke_failed: boom"), None, L, elapsed_s=0.1)
    assert v.decision == "rollback" and "boom" in v.reason and v.code == "probation.errors"
    assert judge(c(nonfinite=1), None, L, elapsed_s=0.1).code == "probation.nonfinite"


def test_latency_is_judged_on_paired_ratios():
    # 2.5x slower on the same frames: rolled back once enough pairs are in
    assert judge(c(), sh(MIN_PAIRS - 1, 7.5, 3.0), L, elapsed_s=1).decision == "continue"
    v = judge(c(), sh(MIN_PAIRS, 7.5, 3.0), L, elapsed_s=1)
    assert v.decision == "rollback" and v.code == "probation.too_slow" and "paired" in v.reason
    # a faster model whose unpaired p50 would read 7.5 ms against 3.5 ms before the swap (the
    # false rollback of the issue): paired with the old model on the same frames it is 0.5x
    assert judge(c(p50=7.5), sh(MIN_PAIRS, 3.5, 7.0), L, elapsed_s=10).decision == "commit"
    # microsecond models: a 3x ratio of 0.003 ms is timer noise, not a regression
    assert judge(c(), sh(MIN_PAIRS, 0.009, 0.003), L, elapsed_s=1).decision == "continue"


def test_lost_time_slices_in_a_few_pairs_do_not_roll_back_a_faster_model():
    # 20 pairs of a model twice as fast; 6 of them lost a 4 ms scheduler slice on the new side
    pairs = [(1.7, 3.5)] * 14 + [(5.7, 3.5)] * 6
    assert judge(c(frames=40), sh(pairs, 0, 0), L, elapsed_s=10).decision == "commit"


def test_manifest_max_latency_ms():
    lim = Limits(probation_s=1, min_inferences=1, max_latency_factor=10, max_latency_ms=0.5)
    assert judge(c(frames=10, p50=0.6), None, lim, elapsed_s=2).decision == "rollback"
    assert judge(c(frames=10, p50=0.1), sh(MIN_PAIRS, 0.6, 0.6), lim, elapsed_s=2).decision == "rollback"


def test_a_stalled_loop_rolls_back_and_never_commits():
    ok = sh(MIN_PAIRS, 1.0, 1.0)
    v = judge(c(), ok, L, elapsed_s=1, stalled_s=2.5)
    assert v.decision == "rollback" and v.code == "probation.stalled"
    # probation is over, but the loop has been inside the model for a while: no commit yet
    assert judge(c(), ok, L, elapsed_s=60, stalled_s=0.9).decision == "continue"
    assert judge(c(), ok, L, elapsed_s=60, stalled_s=0.01).decision == "commit"


def test_disagreement_with_the_previous_model_rolls_back():
    lim = Limits(probation_s=1, min_inferences=1, max_latency_factor=2, min_agreement_pct=90, stall_s=2)
    v = judge(c(), sh(MIN_PAIRS, 1, 1, agreed=10, compared=MIN_PAIRS), lim, elapsed_s=5)
    assert v.decision == "rollback" and v.code == "probation.disagreement" and "62.5%" in v.reason
    assert judge(c(), sh(MIN_PAIRS, 1, 1, agreed=MIN_PAIRS, compared=MIN_PAIRS), lim, elapsed_s=5).decision == "commit"
    # not enough compared frames yet: no verdict on agreement, no commit
    assert judge(c(), sh(MIN_PAIRS, 1, 1, agreed=3, compared=3), lim, elapsed_s=5).decision == "continue"


def test_stall_limit_comes_from_the_frame_time_and_the_watchdog():
    assert stall_limit_s(0.001, None) == 2.0  # fast models: the floor
    assert stall_limit_s(0.4, None) == 8.0  # 20 frame times
    assert stall_limit_s(10.0, None) == 60.0  # capped without a watchdog
    assert stall_limit_s(0.4, 10.0) == 5.0  # acted on before systemd's watchdog fires


def test_without_shadow_pairs_an_exclusive_accelerator_is_judged_against_the_before_figure():
    """Issue 21: no shadow on a Coral; the new model's own p50 against the previous model's, taken
    in the same process before the switch."""
    import dataclasses

    ex = dataclasses.replace(L, baseline_ms=2.0)
    v = judge(c(frames=30, p50=5.0), None, ex, elapsed_s=1.0)
    assert v.decision == "rollback" and v.code == "probation.too_slow" and "before the switch" in v.reason
    assert judge(c(frames=30, p50=3.0), None, ex, elapsed_s=11.0).decision == "commit"  # 1.5x: within 2x
    assert judge(c(frames=5, p50=5.0), None, ex, elapsed_s=1.0).decision == "continue"  # too few frames yet
    assert judge(c(frames=30, p50=5.0), None, L, elapsed_s=11.0).decision == "commit"  # no baseline: as before
