"""Paired statistics of the summary tool on hand-made runs: differences, intervals, p-values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from scdl.evaluation.statistics import (
    bootstrap_ci,
    case_scores,
    compare,
    paired_differences,
    seed_t_interval,
    seeds_needed,
    wilcoxon_over_cases,
)
from scdl.metrics import aggregate_metrics

CASES = ["c1", "c2", "c3", "c4", "c5", "c6"]


def _runs(per_seed: dict[int, list[float]]) -> dict[int, dict[str, float]]:
    return {s: dict(zip(CASES, v, strict=True)) for s, v in per_seed.items()}


def test_a_constant_improvement_has_a_zero_width_interval_and_the_exact_wilcoxon_p():
    a = _runs({1: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 2: [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]})
    b = {s: {c: v + 0.05 for c, v in cases.items()} for s, cases in a.items()}
    res = compare(a, b, n_boot=2000)
    assert res["diff"] == pytest.approx(0.05)
    assert res["ci"] == pytest.approx((0.05, 0.05))
    assert res["excludes_zero"]
    # 6 cases all positive: exact two-sided signed-rank p = 2 / 2^6
    assert res["wilcoxon_p"] == pytest.approx(2 / 64)


def test_pairs_are_matched_by_seed_and_case_not_by_order():
    a = _runs({1: [0.1] * 6, 2: [0.5] * 6})
    b = {2: dict(reversed(list(_runs({2: [0.6] * 6})[2].items()))), 1: _runs({1: [0.1] * 6})[1]}
    seeds, cases, d = paired_differences(a, b)
    assert seeds == [1, 2] and cases == CASES
    np.testing.assert_allclose(d, [[0.0] * 6, [0.1] * 6])
    with pytest.raises(ValueError, match="no seed"):
        paired_differences(a, _runs({3: [0.1] * 6}))


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    few = rng.normal(0.02, 0.05, size=(3, 6))
    many = rng.normal(0.02, 0.05, size=(30, 6))
    lo3, hi3 = bootstrap_ci(few, n_boot=4000)
    lo30, hi30 = bootstrap_ci(many, n_boot=4000)
    assert lo3 < few.mean() < hi3 and lo30 < many.mean() < hi30
    assert hi30 - lo30 < (hi3 - lo3) / 2
    assert bootstrap_ci(few, n_boot=4000, seed=1) != bootstrap_ci(few, n_boot=4000, seed=2)
    assert bootstrap_ci(few, n_boot=4000) == bootstrap_ci(few, n_boot=4000)  # seeded


def test_seed_t_interval_is_students_t_and_guards_the_claim():
    """The t interval over per-seed differences (hand-computed: mean 0.02, sd 0.01, 3 seeds,
    t_0.975,2 = 4.303); a bootstrap interval that excludes 0 on few seeds is not a claim when the
    t interval includes 0, and one seed is never a claim."""
    lo, hi = seed_t_interval(np.array([0.01, 0.02, 0.03]))
    half = 4.302653 * 0.01 / np.sqrt(3)
    assert (lo, hi) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-6)
    assert seed_t_interval(np.array([0.05])) is None
    a = _runs({1: [0.5] * 6, 2: [0.5] * 6, 3: [0.5] * 6})
    b = _runs({1: [0.52] * 6, 2: [0.47] * 6, 3: [0.60] * 6})  # per seed +0.02, -0.03, +0.10
    res = compare(a, b, n_boot=2000)
    assert res["t_ci"][0] < 0 < res["t_ci"][1] and not res["excludes_zero"]
    one = compare(_runs({1: [0.5] * 6}), _runs({1: [0.6] * 6}), n_boot=500)
    assert one["ci"] == pytest.approx((0.1, 0.1)) and not one["excludes_zero"]


def test_seeds_needed_for_a_given_interval_width():
    """sd 0.114 (the 2026-11-27 phantom spread): the normal approximation said (1.96 * 11.4 / 3)^2
    = 55.5; with t quantiles it is 58 (t_0.975,57 = 2.002: 2.002 * 0.114 / sqrt(58) = 0.02997)."""
    per_seed = np.array([-0.114, 0.0, 0.114])  # sd exactly 0.114
    assert seeds_needed(per_seed, 0.03) == 58
    # sd 0.01: n = 2 gives 12.71 * 0.01 / sqrt(2) = 0.09, n = 3 gives 4.30 * 0.01 / sqrt(3) = 0.025
    assert seeds_needed(np.array([0.01, 0.02, 0.03]), 0.03) == 3
    assert seeds_needed(np.array([0.05]), 0.03) is None
    res = compare(_runs({1: [0.5] * 6, 2: [0.5] * 6}), _runs({1: [0.6] * 6, 2: [0.4] * 6}), 200)
    assert res["seeds_needed"] == seeds_needed(np.array([0.1, -0.1]), 0.03)


def test_wilcoxon_is_over_cases_averaged_over_seeds():
    d = np.array([[0.1, -0.2, 0.3, 0.05, 0.2, -0.01], [0.0, -0.1, 0.1, 0.15, 0.2, 0.03]])
    assert wilcoxon_over_cases(d) == pytest.approx(wilcoxon(d.mean(axis=0)).pvalue)
    assert wilcoxon_over_cases(np.zeros((2, 6))) == 1.0


def test_case_scores_average_the_chosen_classes_ignoring_absent_ones():
    res = aggregate_metrics(
        [{"dice": [0.9, 0.1, np.nan]}, {"dice": [0.8, 0.3, 0.5]}],
        ["liver", "adrenal", "vein"],
        ["x", "y"],
    )
    assert case_scores(res) == pytest.approx({"x": 0.5, "y": (0.8 + 0.3 + 0.5) / 3})
    assert case_scores(res, ["adrenal", "vein"]) == pytest.approx({"x": 0.1, "y": 0.4})


def test_seeds_are_ordered_by_value_not_text():
    from scdl.evaluation.statistics import paired_differences, seed_order

    runs = {s: {"c": 0.1 * s} for s in (10, 2, 1)}
    seeds, _, d = paired_differences(runs, {s: {"c": 0.0} for s in runs})
    assert seeds == [1, 2, 10]  # as text: 1, 10, 2
    assert d[:, 0] == pytest.approx([-0.1, -0.2, -1.0])
    assert sorted([10, "b", 2, "a"], key=seed_order) == [2, 10, "a", "b"]
