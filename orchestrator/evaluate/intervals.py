"""95% bootstrap intervals over test items: of one model's WER, and of a student's difference
to its teacher (paired: both synthesized the same items under the same sampling seeds).

Items, not sampling passes, are what is resampled: the passes of an item (`name#p`) are
averaged first.
"""

from __future__ import annotations

import numpy as np


def per_item(items: list[dict], key: str = "wer") -> dict[str, float]:
    """item name -> the mean of `key` over its sampling passes."""
    by_item: dict[str, list[float]] = {}
    for it in items:
        by_item.setdefault(it["name"].split("#")[0], []).append(it[key])
    return {name: float(np.mean(v)) for name, v in by_item.items()}


def _bootstrap(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def wer_interval(items: list[dict], resamples: int, seed: int) -> tuple[float, float]:
    """95% bootstrap interval of the mean WER (%) over test items."""
    return _bootstrap(np.array(list(per_item(items).values())) * 100, resamples, seed)


def paired_interval(
    student: list[dict], teacher: list[dict], resamples: int, seed: int, key: str = "wer"
) -> tuple[float, float]:
    """95% paired bootstrap interval of student - teacher (`wer`: in points) over the items both
    have: each resample draws items, and takes both models' values of the same items."""
    s, t = per_item(student, key), per_item(teacher, key)
    common = [n for n in t if n in s]
    if not common:
        raise ValueError("the student and the teacher share no test item: a paired interval needs the same items")
    scale = 100 if key == "wer" else 1
    return _bootstrap(np.array([s[n] - t[n] for n in common]) * scale, resamples, seed)


# The columns a student's paired intervals add to its figures (trials.csv, MLflow, the page).
DELTA_INTERVALS = ("wer_delta_ci_low", "wer_delta_ci_high", "sim_delta_ci_low", "sim_delta_ci_high")


def delta_intervals(student: list[dict], teacher: list[dict], resamples: int, seed: int) -> dict[str, float]:
    """dWER (points) and dSIM of a student against its teacher, each as its paired 95% interval."""
    wer = paired_interval(student, teacher, resamples, seed, "wer")
    sim = paired_interval(student, teacher, resamples, seed, "sim")
    return dict(zip(DELTA_INTERVALS, (*wer, *sim)))
