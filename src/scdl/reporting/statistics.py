"""Paired comparison of two methods over seeds and test cases: is the difference real?

Two methods run with the same seeds on the same split (the same test cases, the same
preprocessing) form pairs: for seed ``s`` and case ``c`` the paired difference is
``d[s, c] = score_B[s, c] - score_A[s, c]``, where a case's score is the mean Dice over the chosen
classes (all foreground classes, or the minority classes). Every seed is scored on every case: the
design is **crossed** (two-way), not nested.

The estimand: the expected difference over training seeds *and* test cases drawn from the same
distributions as these (a new seed, a new scan of the same kind). Its estimate is the mean of the
complete table ``d`` (mean over seeds of the per-seed mean over cases = mean over cases of the
per-case mean over seeds: one number, whatever the order). Its uncertainty has three parts, seed
effects, case effects and their interaction, and the case part does not shrink with more seeds.

- ``ci`` (the interval stated): the two-way random-effects interval. With the mean squares of
  seeds and cases, ``Var(mean) = (MS_seed + MS_case) / (S C)`` (estimates
  ``s_seed^2 / S + s_case^2 / C`` plus the residual's ``s_res^2 / (S C)`` twice: slightly
  conservative, never negative), Student's t with Satterthwaite's degrees of freedom. Its coverage
  on simulated crossed data is checked by ``tests/test_statistics.py`` (nominal 95 %: 93-98 % from
  3 x 6 to 18 x 6 and 3 x 120 designs).
- ``boot_ci``: the crossed bootstrap (one seed resample and one case resample per replicate, the
  case resample shared by all seeds), a check on the normal-theory interval; with 6 cases it
  covers less than 95 % (few distinct case resamples).
- ``t_ci``: Student's t over the per-seed differences. Its estimand is narrower: the difference
  *on these test cases* (cases fixed, only seeds random); said wherever it is printed.
- ``p``: the two-sided p-value of the random-effects t statistic (the test that ``ci`` inverts);
  :func:`holm` adjusts a family of them, and a difference is *claimed* only where the
  Holm-adjusted p of a pre-declared primary endpoint is below 0.05 (:func:`claim_family`).
- ``wilcoxon_p``: signed-rank test over cases (each case's difference averaged over seeds).

Below :data:`MIN_SEEDS` seeds or :data:`MIN_CASES` test cases no interval is given (``ci`` is
None and ``no_interval`` says why): the difference is still reported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

# Below these sizes the variance of the mean is not estimable in any useful sense: one seed has no
# seed spread, and 2-4 cases leave a t interval on 1-3 degrees of freedom for the case part.
MIN_SEEDS = 3
MIN_CASES = 5
# The significance level of a claim, after Holm's adjustment over the family.
ALPHA = 0.05


class PairingError(ValueError):
    """Two arms that cannot be paired: other split, other preprocessing, or other test cases."""


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


def run_score(result: Mapping[str, Any], classes: Sequence[str] | None = None) -> float:
    """A run's score: the mean over cases of :func:`case_scores` (cases first, then the run: the
    order the paired difference uses, so a table's column means and its differences agree).
    Results without per-case rows (legacy files) fall back to the mean of the class means."""
    if not result.get("per_case"):
        names = list(classes) if classes is not None else list(result["classes"])
        means = [result["per_class"][n]["dice"]["mean"] for n in names]
        arr = np.array([np.nan if v is None else v for v in means], dtype=float)
        return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
    values = np.array(list(case_scores(result, classes).values()), dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def seed_order(seed: Any) -> tuple:
    """Sort key: numeric seeds by value (2 before 10), others after them by their text."""
    if isinstance(seed, (int, float)) and not isinstance(seed, bool):
        return (0, seed, "")
    return (1, 0, str(seed))


def paired_differences(
    runs_a: Mapping[Any, Mapping[str, float]], runs_b: Mapping[Any, Mapping[str, float]]
) -> tuple[list[Any], list[str], np.ndarray]:
    """Seeds run by both methods, their cases, and ``d`` (seeds, cases) = B - A.

    ``runs_x`` maps seed -> {case id: score}; pairs are matched by seed and case id, never by
    order. Every run must hold the same test cases: a case missing from one run is a
    :class:`PairingError` naming it (dropping it would compare other case sets per seed).
    """
    seeds = sorted(set(runs_a) & set(runs_b), key=seed_order)
    if not seeds:
        raise PairingError("no seed was run by both methods: nothing to pair")
    cases = sorted(set(runs_a[seeds[0]]))
    for arm, runs in (("A", runs_a), ("B", runs_b)):
        for s in seeds:
            if set(runs[s]) != set(cases):
                missing = sorted(set(cases) - set(runs[s]))
                extra = sorted(set(runs[s]) - set(cases))
                raise PairingError(
                    f"seed {s} of {arm} was tested on other cases than seed {seeds[0]} of A "
                    f"(missing {missing}, extra {extra}): the arms were not run on one split"
                )
    if not cases:
        raise PairingError("the paired runs share no test case")
    d = np.array([[runs_b[s][c] - runs_a[s][c] for c in cases] for s in seeds], dtype=float)
    return seeds, cases, d


def complete_cases(d: np.ndarray, cases: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``d`` without the cases that have no score in some run (the chosen classes absent from the
    label and the prediction), and the names of those cases: the crossed analysis needs a
    complete table, and dropping a case for every seed keeps seeds comparable."""
    keep = np.isfinite(d).all(axis=0)
    return d[:, keep], [c for c, k in zip(cases, keep, strict=True) if not k]


def mean_squares(d: np.ndarray) -> tuple[float, float, float]:
    """Two-way ANOVA mean squares of a complete (S, C) table without replication:
    ``(MS_seed, MS_case, MS_residual)`` (S, C >= 2)."""
    n_s, n_c = d.shape
    grand = d.mean()
    rows, cols = d.mean(axis=1), d.mean(axis=0)
    ms_seed = n_c * float(((rows - grand) ** 2).sum()) / (n_s - 1)
    ms_case = n_s * float(((cols - grand) ** 2).sum()) / (n_c - 1)
    resid = d - rows[:, None] - cols[None, :] + grand
    ms_res = float((resid**2).sum()) / ((n_s - 1) * (n_c - 1))
    return ms_seed, ms_case, ms_res


def variance_components(d: np.ndarray) -> dict[str, float]:
    """Method-of-moments variances of the seed, case and residual effects of a complete (S, C)
    table (negative estimates clamped at 0)."""
    n_s, n_c = d.shape
    ms_seed, ms_case, ms_res = mean_squares(d)
    return {
        "seed": max(0.0, (ms_seed - ms_res) / n_c),
        "case": max(0.0, (ms_case - ms_res) / n_s),
        "residual": ms_res,
    }


def random_effects_interval(d: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Two-way random-effects interval of the mean of a complete (S, C) table, S, C >= 2.

    ``se^2 = (MS_seed + MS_case) / (S C)``: the unbiased ``(MS_seed + MS_case - MS_res) / (S C)``
    with the residual counted once more (its share ``s_res^2 / (S C)`` is the smallest term), so
    the estimate is never negative and Satterthwaite's degrees of freedom, on two positive terms,
    stay >= min(S - 1, C - 1); the subtracted form gave near-zero degrees of freedom (intervals of
    +-10^5 points) where MS_seed and MS_res nearly cancel. Slightly conservative: 93-98 % coverage
    at nominal 95 % in the tested designs. Returns ``{"lo", "hi", "se", "df", "p"}`` (p:
    two-sided, H0 mean = 0)."""
    from scipy.stats import t

    n_s, n_c = d.shape
    ms_seed, ms_case, _ = mean_squares(d)
    num = ms_seed + ms_case
    mean = float(d.mean())
    if num <= 0.0:  # every difference equal: no spread to estimate
        return {
            "lo": mean,
            "hi": mean,
            "se": 0.0,
            "df": float("inf"),
            "p": 1.0 if mean == 0 else 0.0,
        }
    df = num**2 / (ms_seed**2 / (n_s - 1) + ms_case**2 / (n_c - 1))
    se = float(np.sqrt(num / (n_s * n_c)))
    half = float(t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * t.sf(abs(mean) / se, df))
    return {"lo": mean - half, "hi": mean + half, "se": se, "df": float(df), "p": p}


def crossed_bootstrap_ci(
    d: np.ndarray, n_boot: int = 10000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Crossed bootstrap percentile interval of the mean of a complete (S, C) table: per replicate
    one resample of the seeds and one of the cases, the case resample shared by every drawn seed.
    (The mean of a resampled table is ``w_seed @ d @ w_case / (S C)`` with the draw counts.)"""
    rng = np.random.default_rng(seed)
    n_s, n_c = d.shape
    w_seed = rng.multinomial(n_s, np.full(n_s, 1 / n_s), size=n_boot)  # (n_boot, S)
    w_case = rng.multinomial(n_c, np.full(n_c, 1 / n_c), size=n_boot)  # (n_boot, C)
    samples = np.einsum("bs,sc,bc->b", w_seed, d, w_case) / (n_s * n_c)
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def seed_t_interval(per_seed: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of the per-seed differences (estimand: the difference on
    the test cases used, cases fixed); None for fewer than 2 seeds."""
    from scipy.stats import t

    x = np.asarray(per_seed, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return None
    half = t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def seeds_needed(
    components: Mapping[str, float],
    num_cases: int,
    half_width: float,
    seed_variance: float | None = None,
    max_seeds: int = 10000,
) -> int | None:
    """Seed pairs for a 95 % interval of +- ``half_width`` on ``num_cases`` test cases, from the
    variance components of :func:`variance_components` (normal approximation:
    ``1.96 * sqrt(v_seed / S + v_case / C + v_res / (S C)) <= half_width``). ``seed_variance``
    replaces the measured seed variance (e.g. an upper confidence bound). None where no number
    of seeds reaches it: the case part alone (``v_case / C``) is too wide; more test cases needed."""
    v_seed = components["seed"] if seed_variance is None else seed_variance
    v_case, v_res = components["case"], components["residual"]
    target = (half_width / 1.959964) ** 2
    if v_case / num_cases >= target:
        return None
    for n in range(2, max_seeds + 1):
        if v_seed / n + v_case / num_cases + v_res / (n * num_cases) <= target:
            return n
    return None


def seed_variance_upper(d: np.ndarray, confidence: float = 0.8) -> float:
    """One-sided ``confidence`` upper bound of the seed variance component (chi-square on the seed
    mean square's S - 1 degrees of freedom): with 3 seeds the measured spread can be a third of
    the true one, and a seed count planned from it 10x too small."""
    from scipy.stats import chi2

    n_s, n_c = d.shape
    ms_seed, _, ms_res = mean_squares(d)
    ms_up = ms_seed * (n_s - 1) / chi2.ppf(1 - confidence, n_s - 1)
    return max(0.0, (ms_up - ms_res) / n_c)


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
    """The paired comparison B - A (Dice fractions). Keys: ``seeds``, ``num_cases``,
    ``cases_dropped``, ``diff``, ``per_seed``, ``ci`` (random-effects, the stated interval; None
    below the minimum sizes), ``df``, ``p``, ``boot_ci`` (crossed bootstrap), ``t_ci`` (over
    seeds, these cases), ``wilcoxon_p``, ``no_interval`` (why there is none, else ''),
    ``seeds_needed`` / ``seeds_needed_upper`` (seed pairs for a ±``half_width`` interval at the
    measured seed spread / at its 80 % upper bound; None: not reachable with these cases or not
    measurable), ``excludes_zero`` (``ci``, unadjusted) and ``claimed`` (False until
    :func:`claim_family` decides over the family)."""
    seeds, cases, d_all = paired_differences(runs_a, runs_b)
    d, dropped = complete_cases(d_all, cases)
    n_s, n_c = d.shape
    out: dict[str, Any] = {
        "seeds": seeds,
        "num_cases": n_c,
        "cases_dropped": dropped,
        "diff": float(d.mean()) if d.size else float("nan"),
        "per_seed": [float(v) for v in d.mean(axis=1)] if n_c else [],
        "ci": None,
        "df": None,
        "p": None,
        "boot_ci": None,
        "t_ci": seed_t_interval(d.mean(axis=1)) if n_c else None,
        "wilcoxon_p": wilcoxon_over_cases(d) if n_c else 1.0,
        "no_interval": "",
        "seeds_needed": None,
        "seeds_needed_upper": None,
        "excludes_zero": False,
        "claimed": False,
    }
    reasons = []
    if n_s < MIN_SEEDS:
        reasons.append(f"{n_s} seed{'s' if n_s != 1 else ''} (an interval needs {MIN_SEEDS})")
    if n_c < MIN_CASES:
        reasons.append(f"{n_c} test case{'s' if n_c != 1 else ''} (needs {MIN_CASES})")
    if reasons:
        out["no_interval"] = " and ".join(reasons)
        return out
    re = random_effects_interval(d)
    out.update(ci=(re["lo"], re["hi"]), df=re["df"], p=re["p"])
    out["boot_ci"] = crossed_bootstrap_ci(d, n_boot=n_boot, seed=seed)
    out["excludes_zero"] = re["lo"] > 0 or re["hi"] < 0
    comps = variance_components(d)
    out["components"] = comps
    out["seeds_needed"] = seeds_needed(comps, n_c, half_width)
    out["seeds_needed_upper"] = seeds_needed(
        comps, n_c, half_width, seed_variance=seed_variance_upper(d)
    )
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and is not in the family)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: cast(float, pvalues[i]))
    m = len(order)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(cast(float, pvalues[i]))))
        adjusted[i] = running
    return adjusted


def claim_family(comparisons: Sequence[dict[str, Any]], alpha: float = ALPHA) -> None:
    """Marks a family of primary-endpoint comparisons in place: ``p_holm`` (Holm-adjusted over the
    family: every comparison with a p-value) and ``claimed`` (``p_holm < alpha``), and the family
    size ``family``. Secondary endpoints are not passed here: they stay descriptive."""
    adjusted = holm([c.get("p") for c in comparisons])
    size = sum(p is not None for p in adjusted)
    for c, p in zip(comparisons, adjusted, strict=True):
        c["p_holm"] = p
        c["family"] = size
        c["claimed"] = p is not None and p < alpha


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


def pairing_key(split: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> dict[str, str]:
    """What two paired runs must share: the hash of their split (labeled, unlabeled, val, test
    case lists) and of their data (name, preprocessing protocol, phantom generator settings)."""

    def digest(obj: Any) -> str:
        text = json.dumps(obj, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    data = {k: data_cfg.get(k) for k in ("name", "protocol", "phantom") if k in data_cfg}
    return {"split": digest(dict(split)), "data": digest(data)}


def check_pairing(runs: Sequence[Mapping[str, Any]]) -> None:
    """Raises :class:`PairingError` naming two runs whose ``pairing`` keys (see
    :func:`pairing_key`) differ: other split or other preprocessing cannot be paired. Runs
    without a key (records written by hand) are not checked."""
    keyed = [r for r in runs if r.get("pairing")]
    if not keyed:
        return
    first = keyed[0]
    for r in keyed[1:]:
        for what in ("split", "data"):
            if r["pairing"].get(what) != first["pairing"].get(what):
                thing = "split (split.json)" if what == "split" else "data or preprocessing"
                raise PairingError(
                    f"{r.get('run', '?')} and {first.get('run', '?')} used another {thing} "
                    f"({r['pairing'].get(what)} vs {first['pairing'].get(what)}): they cannot be "
                    "paired; rerun one arm on the other's split and protocol"
                )


def compare_classes(
    runs_a: Sequence[Mapping[str, Any]],
    runs_b: Sequence[Mapping[str, Any]],
    classes: Sequence[str] | None,
    n_boot: int = 10000,
) -> dict[str, Any]:
    """B - A for run records (``seed``, ``result``: a results dict with per-case values, and
    optionally ``pairing``): :func:`compare` of the per-case mean Dice over ``classes`` (None:
    every class), after :func:`check_pairing`."""
    check_pairing([*runs_a, *runs_b])

    def scores(runs: Sequence[Mapping[str, Any]]) -> dict:
        return {s: case_scores(r["result"], classes) for s, r in runs_by_seed(runs).items()}

    return compare(scores(runs_a), scores(runs_b), n_boot)


def compare_runs(
    runs_a: Sequence[Mapping[str, Any]],
    runs_b: Sequence[Mapping[str, Any]],
    minority: Sequence[str],
    n_boot: int = 10000,
) -> dict[str, dict[str, Any]]:
    """:func:`compare_classes` over every class (``mean``, the primary endpoint) and over the
    ``minority`` classes (secondary: descriptive)."""
    return {
        "mean": compare_classes(runs_a, runs_b, None, n_boot),
        "minority": compare_classes(runs_a, runs_b, minority, n_boot),
    }


def claim_primary(pairs: Sequence[dict[str, Any]], primary: str = "mean") -> None:
    """:func:`claim_family` over the ``primary`` endpoint of every comparison of :func:`compare_runs`
    in ``pairs`` (entries without it, e.g. errors, skipped); the other endpoint is descriptive."""
    claim_family([c[primary] for c in pairs if primary in c])


def format_cell(c: Mapping[str, Any]) -> str:
    """``diff [95 % CI] * | p`` in Dice points for Markdown tables; ``*`` = claimed (Holm over
    the family); p is Holm-adjusted where the family was formed, else the raw p. Without an
    interval: ``diff (no interval: <why>) | –``."""
    text = f"{c['diff'] * 100:+.1f}"
    if c.get("ci") is None:
        return f"{text} (no interval: {c.get('no_interval') or 'not computed'}) | –"
    lo, hi = c["ci"]
    text += f" [{lo * 100:+.1f}, {hi * 100:+.1f}]"
    mark = " *" if c.get("claimed") else ""
    p = c.get("p_holm", c.get("p"))
    return f"{text}{mark} | {format_p(p)}"


def format_p(p: float) -> str:
    """Two significant digits; below 0.001 as '<0.001' (smaller values only reflect the model)."""
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def format_needed(*comparisons: Mapping[str, Any]) -> str:
    """``seeds_needed`` of each comparison, ``n`` or ``n-m`` (m: at the 80 % upper bound of the
    seed spread), '–' where unmeasured, 'more cases' where no seed count reaches it."""

    def one(c: Mapping[str, Any]) -> str:
        if c.get("ci") is None:
            return "–"
        n, up = c.get("seeds_needed"), c.get("seeds_needed_upper")
        if n is None:
            return "more cases"
        return str(n) if up == n else f"{n}-{up if up is not None else 'more cases'}"

    return " / ".join(one(c) for c in comparisons)
