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
