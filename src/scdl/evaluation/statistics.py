"""Paired comparison of two methods over seeds and test cases: is the difference real?

Two methods run with the same seeds on the same split (same test cases) form pairs: for seed ``s``
and case ``c`` the paired difference is ``d[s, c] = score_B[s, c] - score_A[s, c]``, where a case's
score is the mean Dice over the chosen classes (all foreground classes, or the minority classes).

- the **paired difference** is the mean over seeds of the per-seed mean over cases;
- its **95 % confidence interval** is a two-level bootstrap: seeds are resampled with replacement,
  then the cases within each drawn seed, and the 2.5 / 97.5 percentiles of the resampled means are
  taken (both sources of variation, training randomness and case sampling, are in the interval);
- the **seed-level t interval** is Student's t over the per-seed differences (n_seeds - 1 degrees
  of freedom): with few seeds the bootstrap has few distinct resamples (10 for 3 seeds) and
  understates the seed variance; the t interval does not;
- the **Wilcoxon signed-rank p-value** is over cases (each case's difference averaged over seeds,
  so the cases are the independent units), two-sided.

A difference is claimed (``excludes_zero``) only where both intervals exclude 0, so never from one
seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def case_scores(
    result: Mapping[str, Any], classes: Sequence[str] | None = None
) -> dict[str, float]:
    """Per-case mean Dice over ``classes`` (default: every class) from a results dict of
    :func:`scdl.metrics.results.aggregate_metrics` (NaN = class absent on both sides: ignored)."""
    names = list(classes) if classes is not None else list(result["classes"])
    scores = {}
    for case in result["per_case"]:
        values = [case["values"][n]["dice"] for n in names]
        arr = np.array([np.nan if v is None else v for v in values], dtype=float)
        scores[str(case["case"])] = float(np.nanmean(arr)) if np.isfinite(arr).any() else np.nan
    return scores


def seed_order(seed: Any) -> tuple:
    """Sort key: numeric seeds by value (2 before 10), others after them by their text."""
    if isinstance(seed, (int, float)) and not isinstance(seed, bool):
        return (0, seed, "")
    return (1, 0, str(seed))


def paired_differences(
    runs_a: Mapping[Any, Mapping[str, float]], runs_b: Mapping[Any, Mapping[str, float]]
) -> tuple[list[Any], list[str], np.ndarray]:
    """Seeds and cases present in both methods, and ``d`` (seeds, cases) = B - A.

    ``runs_x`` maps seed -> {case id: score}; pairs are matched by seed and case id, never by order.
    """
    seeds = sorted(set(runs_a) & set(runs_b), key=seed_order)
    if not seeds:
        raise ValueError("no seed was run by both methods: nothing to pair")
    cases = sorted(set.intersection(*(set(runs_a[s]) & set(runs_b[s]) for s in seeds)))
    if not cases:
        raise ValueError("the paired runs share no test case")
    d = np.array([[runs_b[s][c] - runs_a[s][c] for c in cases] for s in seeds], dtype=float)
    return seeds, cases, d


def bootstrap_ci(
    d: np.ndarray, n_boot: int = 10000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Two-level bootstrap interval of ``mean over seeds of mean over cases`` of ``d`` (S, C):
    seeds resampled with replacement, then cases within each drawn seed."""
    rng = np.random.default_rng(seed)
    n_seeds, n_cases = d.shape
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    case_idx = rng.integers(0, n_cases, size=(n_boot, n_seeds, n_cases))
    samples = np.nanmean(d[seed_idx[..., None], case_idx], axis=(1, 2))
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def seed_t_interval(per_seed: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of the per-seed differences; None for fewer than 2 seeds."""
    from scipy.stats import t

    x = np.asarray(per_seed, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return None
    half = t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def seeds_needed(per_seed: np.ndarray, half_width: float, level: float = 0.95) -> int | None:
    """Seed pairs for a Student-t interval of +- ``half_width`` given the measured spread of the
    per-seed differences (sample sd): the smallest n with t_{n-1} * sd / sqrt(n) <= half_width.
    None for fewer than 2 seeds (no spread measured)."""
    from scipy.stats import t

    x = np.asarray(per_seed, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return None
    sd = float(x.std(ddof=1))
    n = 2
    while t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n) > half_width:
        n += 1
    return n


def _excludes_zero(interval: tuple[float, float] | None) -> bool:
    return interval is not None and (interval[0] > 0 or interval[1] < 0)


def wilcoxon_over_cases(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the per-case differences (averaged over seeds);
    1.0 when every difference is 0."""
    from scipy.stats import wilcoxon

    per_case = np.nanmean(d, axis=0)
    per_case = per_case[np.isfinite(per_case)]
    if per_case.size == 0 or np.all(per_case == 0):
        return 1.0
    return float(wilcoxon(per_case).pvalue)


def compare(
    runs_a: Mapping[Any, Mapping[str, float]],
    runs_b: Mapping[Any, Mapping[str, float]],
    n_boot: int = 10000,
    seed: int = 0,
    half_width: float = 0.03,
) -> dict[str, Any]:
    """The paired comparison B - A: difference, its bootstrap (``ci``) and seed-level t (``t_ci``)
    intervals, the per-seed differences, the Wilcoxon p-value, and ``seeds_needed``: the seed pairs
    a t interval of +- ``half_width`` (Dice, 0.03 = 3 points) would need at the measured spread."""
    seeds, cases, d = paired_differences(runs_a, runs_b)
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    per_seed = np.nanmean(d, axis=1)
    t_ci = seed_t_interval(per_seed)
    return {
        "seeds": seeds,
        "num_cases": len(cases),
        "diff": float(np.nanmean(per_seed)),
        "per_seed": [float(v) for v in per_seed],
        "ci": (lo, hi),
        "t_ci": t_ci,
        "seeds_needed": seeds_needed(per_seed, half_width),
        "excludes_zero": _excludes_zero((lo, hi)) and _excludes_zero(t_ci),
        "wilcoxon_p": wilcoxon_over_cases(d),
    }


def runs_by_seed(runs: Sequence[Mapping[str, Any]], label: str = "") -> dict[Any, Mapping]:
    """``seed -> run`` of one group of run records; a seed seen twice is an error naming the runs
    (a dict would silently keep the last, and a pair would compare whichever run came last:
    typically runs of another data set or sweep mixed into the group)."""
    by_seed: dict[Any, list[Mapping]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], []).append(r)
    twice = {s: rs for s, rs in by_seed.items() if len(rs) > 1}
    if twice:
        seed, rs = next(iter(twice.items()))
        where = ", ".join(str(r.get("run", "?")) for r in rs)
        raise ValueError(
            f"{label + ': ' if label else ''}seed {seed} has {len(rs)} runs ({where}); a paired "
            "comparison needs one run per seed: runs of another data set or configuration need "
            "their own group (summarise their sweep folders separately)"
        )
    return {s: rs[0] for s, rs in by_seed.items()}


def compare_classes(
    runs_a: Sequence[Mapping[str, Any]],
    runs_b: Sequence[Mapping[str, Any]],
    classes: Sequence[str] | None,
    n_boot: int = 10000,
) -> dict[str, Any]:
    """B - A for run records (``seed`` and ``result``, a results dict with per-case values):
    :func:`compare` of the per-case mean Dice over ``classes`` (None: every class)."""

    def scores(runs: Sequence[Mapping[str, Any]]) -> dict:
        return {s: case_scores(r["result"], classes) for s, r in runs_by_seed(runs).items()}

    return compare(scores(runs_a), scores(runs_b), n_boot)


def compare_runs(
    runs_a: Sequence[Mapping[str, Any]],
    runs_b: Sequence[Mapping[str, Any]],
    minority: Sequence[str],
    n_boot: int = 10000,
) -> dict[str, dict[str, Any]]:
    """:func:`compare_classes` over every class (``mean``) and over the ``minority`` classes."""
    return {
        "mean": compare_classes(runs_a, runs_b, None, n_boot),
        "minority": compare_classes(runs_a, runs_b, minority, n_boot),
    }


def format_cell(c: Mapping[str, Any]) -> str:
    """``diff [bootstrap CI] (t: [seed t CI]) * | p`` in Dice points, for Markdown tables
    (``*`` = claimed: both intervals exclude 0)."""
    lo, hi = c["ci"]
    text = f"{c['diff'] * 100:+.1f} [{lo * 100:+.1f}, {hi * 100:+.1f}]"
    if c.get("t_ci") is not None:
        tlo, thi = c["t_ci"]
        text += f" (t: [{tlo * 100:+.1f}, {thi * 100:+.1f}])"
    mark = " *" if c["excludes_zero"] else ""
    return f"{text}{mark} | {c['wilcoxon_p']:.3g}"


def format_needed(*comparisons: Mapping[str, Any]) -> str:
    """The ``seeds_needed`` of each comparison, ``a / b`` ('–' where unmeasured)."""
    return " / ".join(
        "–" if c.get("seeds_needed") is None else str(c["seeds_needed"]) for c in comparisons
    )
