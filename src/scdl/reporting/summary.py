"""Summarise finished runs (single or multirun folders) into one comparison table.

``python -m scdl.reporting.summary logs/train/multiruns/phantom_scdl/<time> [more dirs...]``

Every folder below the given ones that holds the training test's results (``test_metrics.json``,
the schema of :mod:`scdl.metrics.results`; or the legacy ``test_dice.json`` of older runs) is a
run; runs are grouped by experiment and ablation (from their ``.hydra/config.yaml``) and reported as mean +- std over seeds
of the mean test Dice and of the mean Dice of the ``k`` smallest classes. "Smallest" is measured on
the data, not assumed: the classes with the fewest voxels in the run's labeled training cases.
Prints a Markdown table (paste-able into the README). With ``--paper`` it also prints the papers'
table layout (average Dice and ASD, then per-class Dice) from the runs' ``eval/test_paper``
outputs of ``src/eval.py ... protocol=paper``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from scdl.reporting.paper_table import per_run_markdown
from scdl.reporting.records import collect, load_records
from scdl.reporting.statistics import (
    claim_primary,
    compare_classes,
    compare_runs,
    format_cell,
    format_needed,
    runs_by_seed,
    seed_order,
)
from scdl.runs import TRAIN_TEST_STEM

Record = Mapping[str, Any]  # a run record (scdl.reporting.records.RunRecord or an archived one)
RecordT = TypeVar("RecordT", bound=Record)


def _data_set(record: Record) -> str:
    return str(record.get("data", "?"))


def _by_experiment_and_ablation(
    records: Sequence[Record],
) -> list[tuple[tuple[str, str], list[Record]]]:
    """Groups of runs by experiment and ablation, and by data set: the held-out phantom is run with
    the phantom's experiment, and mixing its seeds into the phantom's would pair the wrong runs."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        groups[(r["experiment"], r["ablation"], _data_set(r))].append(r)
    return [
        ((e, a), rs)
        for (e, a, _), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1]))
    ]


def _data_sets(records: Sequence[Record]) -> list[str]:
    return sorted({_data_set(r) for r in records})


def check_one_run_per_seed(records: Sequence[Record]) -> None:
    """Raises ValueError naming the runs when a group (experiment, ablation, data set) holds two
    runs of one seed (e.g. two sweep folders of the same configuration summarised together):
    the mean over seeds would count a seed twice and a paired comparison would pick one."""
    for (exp, abl), rs in _by_experiment_and_ablation(records):
        runs_by_seed(rs, f"{exp}/{abl} on {_data_set(rs[0])}")


def markdown_table(records: Sequence[Record]) -> str:
    """Mean ± sample std over seeds per (experiment, ablation), with a data-set column when the
    runs come from several data sets (their smallest classes then differ: named per row)."""
    multi = len(_data_sets(records)) > 1
    small = records[0]["small_classes"] if records else []
    smallest = f"the {len(small)} smallest" + ("" if multi else f" ({', '.join(small)})")
    lines = [
        ("| data | " if multi else "| ")
        + f"experiment | ablation | seeds | best val Dice % | mean Dice % | mean Dice % of {smallest} |",
        "|---|---|---|---|---|---|" + ("---|" if multi else ""),
    ]
    for (exp, abl), rs in _by_experiment_and_ablation(records):
        rs = sorted(rs, key=lambda r: seed_order(r["seed"]))
        d = np.array([r["dice"] for r in rs]) * 100
        s = np.array([r["small_dice"] for r in rs]) * 100
        seeds = ",".join(str(r["seed"]) for r in rs)
        fmt = (
            (lambda a: f"{a.mean():.1f} ± {a.std(ddof=1):.1f}")
            if len(rs) > 1
            else (lambda a: f"{a[0]:.1f}")
        )
        v = np.array([r["val_dice"] for r in rs if r.get("val_dice") is not None]) * 100
        val = fmt(v) if v.size == len(rs) else "–"
        data = f"| {_data_set(rs[0])} " if multi else ""
        smalls = f" ({', '.join(rs[0]['small_classes'])})" if multi else ""
        lines.append(f"{data}| {exp} | {abl} | {seeds} | {val} | {fmt(d)} | {fmt(s)}{smalls} |")
    lines.append("")
    lines.append(
        "mean ± sample standard deviation (ddof=1) over seeds of the per-run test means (a run's "
        "mean: over test cases of each case's mean over its classes); best val Dice: the best "
        "validation Dice of each run (finished.json), what variants are chosen on"
    )
    return "\n".join(lines)


def _group_key(record: Record) -> str:
    return f"{record['experiment']}/{record['ablation']}"


def paired_vs_baseline(
    records: Sequence[Record],
    baseline: str | None = None,
    n_boot: int = 10000,
    primary: str = "mean",
) -> tuple[str, list[dict]]:
    """Every (experiment, ablation) group against ``baseline`` (``experiment/ablation``; default
    the group with ablation ``baseline``, else the first), paired by seed and test case: per group
    ``{"method", "baseline", "mean", "minority"}`` with the :func:`~scdl.reporting.statistics.
    compare` results over all classes and over the smallest classes, or ``{"method", "error"}``
    when nothing pairs (other seeds, cases, split or preprocessing). Runs of several data sets are
    compared within each data set (``method`` then ends with `` on <data set>``). The ``primary``
    endpoint (``mean`` or ``minority``) of all of them is one family: Holm-adjusted, claimed where
    the adjusted p < 0.05; the other endpoint is descriptive. Returns the baseline's key and the
    list."""
    data_sets = _data_sets(records)
    if len(data_sets) == 1:
        key, out = _paired_in_one_data_set(records, baseline, n_boot)
    else:
        key, out = baseline or "", []
        for data in data_sets:
            key, pairs = _paired_in_one_data_set(
                [r for r in records if _data_set(r) == data], baseline, n_boot
            )
            out += [{**c, "method": f"{c['method']} on {data}", "data": data} for c in pairs]
    claim_primary(out, primary)  # one family: every comparison printed, on the primary endpoint
    return key, out


def _groups_and_baseline(
    records: Sequence[Record], baseline: str | None
) -> tuple[dict[str, list[Record]], str]:
    """The runs of one data set by ``experiment/ablation``, and the baseline's key: ``baseline``,
    else the group with ablation ``baseline``, else the first."""
    groups = {_group_key(rs[0]): rs for _, rs in _by_experiment_and_ablation(records)}
    if baseline is None:
        plain = [k for k in groups if k.endswith("/baseline")]
        baseline = plain[0] if len(plain) == 1 else next(iter(groups))
    if baseline not in groups:
        raise SystemExit(
            f"--baseline {baseline}: not among the groups of {_data_set(records[0])} "
            f"({', '.join(sorted(groups))})"
        )
    return groups, baseline


def _paired_in_one_data_set(
    records: Sequence[Record], baseline: str | None, n_boot: int
) -> tuple[str, list[dict]]:
    if len({_group_key(r) for r in records}) < 2:
        return baseline or "", []
    groups, baseline = _groups_and_baseline(records, baseline)
    small = records[0]["small_classes"]

    out: list[dict] = []
    for key, rs in groups.items():
        if key == baseline:
            continue
        try:
            pair = compare_runs(groups[baseline], rs, small, n_boot)
        except (ValueError, KeyError) as err:  # no common seed/case, or no per-case values
            out.append({"method": key, "error": str(err)})
            continue
        out.append({"method": key, "baseline": baseline, **pair})
    return baseline, out


def comparison_table(
    records: Sequence[Record],
    baseline: str | None = None,
    n_boot: int = 10000,
    primary: str = "mean",
    paired: tuple[str, list[dict]] | None = None,
) -> str:
    """The comparisons of :func:`paired_vs_baseline` as Markdown: the mean difference of mean Dice
    and of the minority classes' Dice with the two-way random-effects 95 % interval over seeds and
    test cases and its p-value (Holm-adjusted on the ``primary`` endpoint, descriptive on the
    other; :mod:`scdl.reporting.statistics`). ``paired``: its result when already computed (the
    forest plot uses the same comparisons)."""
    baseline, pairs = paired or paired_vs_baseline(records, baseline, n_boot, primary)
    if not pairs:
        return ""
    multi = len(_data_sets(records)) > 1
    small = (
        [f"the {len(records[0]['small_classes'])} smallest of each data set"]
        if multi
        else records[0]["small_classes"]
    )
    family = sum(c[primary].get("p") is not None for c in pairs if primary in c)
    primary_head, secondary_head = "Δ mean Dice", f"Δ Dice of {', '.join(small)}"
    if primary == "minority":
        primary_head, secondary_head = secondary_head, primary_head
    lines = [
        f"Paired differences vs {baseline}{' within each data set' if multi else ''} "
        "(B - A, Dice points; pairs: same seed, same test case, same split and preprocessing). "
        "95 % interval: two-way random effects, seeds and test cases both random (the difference "
        "expected for a new seed on new cases of this kind). "
        f"Primary endpoint: {primary_head} ("
        + (
            f"p: Holm-adjusted over its {family} comparisons with an interval in this table; "
            "* = claimed, adjusted p < 0.05"
            if family
            else "no comparison in this table has an interval: nothing is claimed"
        )
        + f"). {secondary_head}: descriptive (raw p, no "
        "claim). No interval below 3 seeds or 5 cases. Seeds for ±3: seed pairs for a ±3-point "
        "interval on these cases at the measured seed spread - at its 80 % upper bound "
        "('more cases': the case variance alone is wider), primary / secondary.",
        "",
        f"| B | seeds | cases | {primary_head} [95 % CI] | p | {secondary_head} [95 % CI] | p "
        "| seeds for ±3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    secondary = "minority" if primary == "mean" else "mean"
    for c in pairs:
        if "error" in c:
            lines.append(f"| {c['method']} | – | – | not paired: {c['error']} | | | | |")
            continue
        first, second = c[primary], c[secondary]
        seeds = ",".join(str(x) for x in first["seeds"])
        cases = str(first["num_cases"])
        if first["cases_dropped"]:
            cases += f" (without {', '.join(first['cases_dropped'])}: classes absent)"
        lines.append(
            f"| {c['method']} | {seeds} | {cases} | {format_cell(first)} | "
            f"{format_cell(second)} | {format_needed(first, second)} |"
        )
    return "\n".join(lines)


def per_class_table(records: Sequence[Record]) -> str:
    """Per-class mean test Dice (%) per (experiment, ablation), averaged over seeds."""
    groups = _by_experiment_and_ablation(records)
    names = list(records[0]["per_class"]) if records else []
    multi = len(_data_sets(records)) > 1

    def head(e: str, a: str, rs: list[Record]) -> str:
        return f"{e} / {a}" + (f" on {_data_set(rs[0])}" if multi else "")

    lines = [
        "| class | " + " | ".join(head(e, a, rs) for (e, a), rs in groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for n in names:
        vals = [np.mean([r["per_class"][n] for r in rs]) * 100 for _, rs in groups]
        lines.append(f"| {n} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


def per_class_paired_table(
    records: Sequence[Record], baseline: str | None = None, n_boot: int = 2000
) -> str:
    """Per class, the paired difference of each group vs ``baseline`` (Dice points, same seed and
    test case) with its random-effects 95 % interval: which classes carry a difference. A
    description (classes x arms comparisons, no correction, no claim). One data set; '' for
    several or a single group."""
    if len(_data_sets(records)) > 1 or len({_group_key(r) for r in records}) < 2:
        return ""
    groups, baseline = _groups_and_baseline(records, baseline)
    names = list(records[0]["per_class"])

    def cell(c: dict) -> str:
        ci = c.get("ci")
        interval = f" [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]" if ci is not None else ""
        return f"{c['diff'] * 100:+.1f}{interval}"

    columns: dict[str, list[str]] = {}  # method -> one cell per class; unpaired groups left out
    for method, rs in groups.items():
        if method == baseline:
            continue
        try:
            columns[method] = [
                cell(compare_classes(groups[baseline], rs, [n], n_boot)) for n in names
            ]
        except (ValueError, KeyError):  # no common seed/case: the comparison table says so
            continue
    if not columns:
        return ""
    methods = list(columns)
    lines = [
        f"Per-class paired differences vs {baseline} (Dice points [random-effects 95 % interval "
        "over seeds and cases]); descriptive: one comparison per class and arm, no correction for "
        "their number, no claim",
        "",
        "| class | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for i, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(columns[m][i] for m in methods) + " |")
    return "\n".join(lines)


def parse_seeds(text: str) -> set[int]:
    """``"1,2,3"`` or ``"1-3,7"`` -> {1, 2, 3, (7)}; ValueError naming the bad item."""
    seeds: set[int] = set()
    for item in filter(None, (t.strip() for t in text.split(","))):
        lo, sep, hi = item.partition("-")
        try:
            seeds.update(range(int(lo), int(hi) + 1) if sep else {int(item)})
        except ValueError:
            raise ValueError(f"--seeds {text}: {item!r} is not a seed or a range a-b") from None
    return seeds


def seed_ranges(seeds: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``: the form :func:`parse_seeds` reads back."""
    spans: list[list[int]] = []
    for seed in sorted(set(seeds)):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def only_seeds(records: Sequence[RecordT], seeds: set[int]) -> list[RecordT]:
    """The runs of the given seeds: one seed set for every arm, when some arms have more seeds
    than others (a mean over 18 seeds beside one over 3 compares seed sets, not arms).
    ValueError naming the seeds found when none is kept."""
    kept = [r for r in records if r["seed"] in seeds]
    if not kept:
        found = ",".join(str(s) for s in sorted({r["seed"] for r in records}, key=seed_order))
        raise ValueError(f"--seeds: no finished run of seeds {sorted(seeds)} (found: {found})")
    return kept


def only_arms(records: Sequence[RecordT], arms: str) -> list[RecordT]:
    """The runs of the listed ``experiment/ablation`` groups (comma-separated): a comparison
    family declared in advance (e.g. the switches against released SCDL) holds only its own arms,
    so Holm adjusts over that family and not over every arm of the folder. ValueError naming
    the groups found when a listed one has no run."""
    wanted = [a.strip() for a in arms.split(",") if a.strip()]
    found = sorted({_group_key(r) for r in records})
    missing = [a for a in wanted if a not in found]
    if not wanted or missing:
        raise ValueError(
            f"--arms {arms}: no finished run of {missing or arms!r} (found: {', '.join(found)})"
        )
    return [r for r in records if _group_key(r) in wanted]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "roots", nargs="+", type=Path, help="run or multirun folders, or results/ archive folders"
    )
    parser.add_argument("--smallest", type=int, default=4, help="k smallest classes")
    parser.add_argument("--per-class", action="store_true", help="also print per-class Dice")
    parser.add_argument(
        "--baseline", default=None, help="experiment/ablation to compare against (paired stats)"
    )
    parser.add_argument(
        "--paper", action="store_true", help="only the paper-style table of eval.py protocol=paper"
    )
    parser.add_argument(
        "--plot", type=Path, default=None, help="forest plot of the paired differences (PNG)"
    )
    parser.add_argument(
        "--seeds", default=None, help="only these seeds, e.g. 1,2,3 or 1-3 (default: all)"
    )
    parser.add_argument(
        "--arms",
        default=None,
        help="only these experiment/ablation groups, comma-separated (a declared comparison "
        "family; default: all)",
    )
    parser.add_argument(
        "--primary",
        choices=("mean", "minority"),
        default="mean",
        help="the pre-declared primary endpoint: claims (Holm) on it only (default: mean Dice)",
    )
    return parser.parse_args(argv)


def render(args: argparse.Namespace) -> str:
    """The tables :func:`main` prints, as one string (the results archive regenerates its
    committed tables with it). SystemExit naming the problem where nothing can be summarised."""
    if args.paper:
        return per_run_markdown(args.roots)
    records = load_records(args.roots) + collect(args.roots, args.smallest)
    if not records:
        raise SystemExit(f"no finished runs ({TRAIN_TEST_STEM}.json) below {args.roots}")
    try:
        if args.seeds is not None:
            records = only_seeds(records, parse_seeds(args.seeds))
        if args.arms is not None:
            records = only_arms(records, args.arms)
        check_one_run_per_seed(records)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    parts = [markdown_table(records)]
    paired = paired_vs_baseline(records, args.baseline, primary=args.primary)
    comparison = comparison_table(records, primary=args.primary, paired=paired)
    if comparison:
        parts.append(comparison)
    if args.per_class:
        parts.append(per_class_table(records))
        per_class_paired = per_class_paired_table(records, args.baseline)
        if per_class_paired:
            parts.append(per_class_paired)
    if args.plot is not None:
        from scdl.reporting.paper_table import plot_paired

        base, pairs = paired
        pairs = [c for c in pairs if "error" not in c]
        if plot_paired({"paired": pairs}, args.plot, against=base) is None:
            raise SystemExit("--plot: no paired comparison to plot")
        parts.append(f"forest plot: {args.plot}")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    print(render(parse_args(argv)))


if __name__ == "__main__":
    main()
