"""The paired bootstrap interval of a student's difference to its teacher, pinned by hand-made
items whose answer is known, and against a plain re-implementation of the paired bootstrap."""

import numpy as np
import pytest

from orchestrator.evaluate.intervals import paired_interval, wer_interval


def items(wers, sims=None, passes=1):
    sims = sims or [0.9] * len(wers)
    return [
        {"name": f"i{k}" + (f"#{p}" if passes > 1 else ""), "wer": w, "sim": s}
        for k, (w, s) in enumerate(zip(wers, sims))
        for p in range(passes)
    ]


def test_a_student_that_errs_on_the_same_items_as_its_teacher_differs_by_nothing():
    teacher = items([0.0, 0.5, 0.1, 0.3] * 5)
    assert paired_interval(teacher, teacher, 1000, 0) == (0.0, 0.0)
    # a constant shift on every item: the interval is the shift, however spread the items are
    shifted = items([w + 0.02 for w in [0.0, 0.5, 0.1, 0.3] * 5])
    assert paired_interval(shifted, teacher, 1000, 0) == pytest.approx((2.0, 2.0))
    # the unpaired intervals of the two models overlap widely; the paired one does not
    lo_t, hi_t = wer_interval(teacher, 1000, 0)
    lo_s, hi_s = wer_interval(shifted, 1000, 0)
    assert lo_s < hi_t


def test_paired_interval_is_the_percentile_bootstrap_of_per_item_differences():
    rng = np.random.default_rng(7)
    t = rng.uniform(0, 0.3, 40)
    s = np.clip(t + rng.normal(0.01, 0.05, 40), 0, 1)
    # passes of an item are averaged first: two passes each, the same mean per item
    student = [
        {"name": f"x{k}#{p}", "wer": v + (0.01 if p else -0.01), "sim": 0.8} for k, v in enumerate(s) for p in (0, 1)
    ]
    teacher = [{"name": f"x{k}", "wer": v, "sim": 0.8} for k, v in enumerate(t)]
    diffs = (s - t) * 100
    draw = np.random.default_rng(3).integers(0, 40, size=(4000, 40))
    expected = np.percentile(diffs[draw].mean(axis=1), [2.5, 97.5])
    assert paired_interval(student, teacher, 4000, 3) == pytest.approx(tuple(expected))
    lo, hi = paired_interval(student, teacher, 4000, 3)
    assert lo < diffs.mean() < hi


def test_sim_differences_are_in_sim_units_and_only_shared_items_count():
    teacher = items([0.1] * 6, sims=[0.9] * 6)
    student = items([0.1] * 6, sims=[0.85] * 6)[:4]  # two items missing: compared on the four shared
    assert paired_interval(student, teacher, 500, 0, key="sim") == pytest.approx((-0.05, -0.05))
    with pytest.raises(ValueError, match="share no test item"):
        paired_interval(items([0.1]), [{"name": "other", "wer": 0.0, "sim": 1.0}], 500, 0)


def test_delta_intervals_name_both_differences():
    from orchestrator.evaluate.intervals import DELTA_INTERVALS, delta_intervals

    teacher = items([0.1, 0.2, 0.0, 0.3], sims=[0.9, 0.8, 0.85, 0.9])
    student = items([0.15, 0.25, 0.05, 0.35], sims=[0.88, 0.78, 0.83, 0.88])
    got = delta_intervals(student, teacher, 500, 0)
    assert tuple(got) == DELTA_INTERVALS
    assert [got[k] for k in DELTA_INTERVALS] == pytest.approx([5.0, 5.0, -0.02, -0.02])
