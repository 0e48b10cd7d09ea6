"""The papers' results table from a sweep: one row per method, mean ± std over seeds.

``python -m scdl.reporting.paper_table <sweep or run folders> [-o <dir>]`` (``sweep=paper_table``
calls it when its last job ends). Each run contributes its ``eval/test_paper/metrics.json``
(``src/eval.py ... protocol=paper`` on its best checkpoint, which ``post_eval=[paper]`` runs after
training): the per-run Avg Dice / Avg ASD are means over test cases of the per-case class means, the
per-class Dice means over cases. A row is a method (``method_name`` of the experiment, plus the SCDL
ablation where it is not ``full``/``baseline``); its cells are mean ± sample standard deviation
(``ddof=1``) over the seeds of that method. The minority classes (the ``k`` foreground classes with
the fewest voxels in the labeled training cases, measured on the data) are marked ``*``.

Writes ``paper_table.md``, ``paper_table.csv`` and ``paper_table.png`` (per-class Dice bars by
method) and, when W&B is on, logs them to a ``summary`` run in the sweep's W&B group.

Every row with SCDL is also compared with the same framework without it (the row whose name lacks
`` + SCDL`` and the ablation suffix), paired by seed and test case (:mod:`scdl.reporting.statistics`):
the mean difference of Avg Dice (the primary endpoint) and of the minority classes' Dice
(descriptive) with the two-way random-effects 95 % interval over seeds and test cases, a p-value
Holm-adjusted over the table's primary comparisons, and the crossed bootstrap and seed-level t
intervals as checks. Below 3 seeds or 5 test cases there is no interval, only the difference and
why. They are printed under the table, written to ``paper_table_paired.csv`` and logged to the
W&B summary run.
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from omegaconf import OmegaConf

from scdl.metrics.results import load_metrics
from scdl.reporting.records import collect_runs
from scdl.runs import load_config, read_split, runs_holding

log = logging.getLogger(__name__)

# Column heads of the SCDL / GALoss / DHC tables.
SHORT_NAMES = {
    "spleen": "Sp",
    "right_kidney": "RK",
    "left_kidney": "LK",
    "gallbladder": "Ga",
    "esophagus": "Es",
    "liver": "Li",
    "stomach": "St",
    "aorta": "Ao",
    "inferior_vena_cava": "IVC",
    "portal_splenic_veins": "PSV",
    "pancreas": "Pa",
    "right_adrenal_gland": "RAG",
    "left_adrenal_gland": "LAG",
    "duodenum": "Du",
    "bladder": "Bl",
    "prostate_uterus": "P/U",
}
# row order of the papers' tables; other methods follow alphabetically
METHOD_ORDER = tuple(
    name
    for base in (
        "Supervised only",
        "Mean teacher",
        "UA-MT",
        "URPC",
        "CPS",
        "GA-CPS",
        "DHC",
        "CReST",
        "SimiS",
        "DST",
        "CLD",
        "DePL",
        "Adsh",
        "Acisis",
        "GA-MagicNet",
    )
    for name in (base, f"{base} + SCDL")
)


def _minority(records: Sequence[Mapping[str, Any]], k: int) -> list[str]:
    """Names of the ``k`` smallest classes of the first run's labeled split (same for a sweep)."""

    from scdl.data.class_stats import smallest_classes

    first = records[0]
    split = cast(dict, read_split(first["run"]))  # every training run folder holds split.json
    names = first["classes"]
    ids = smallest_classes(Path(first["cfg"].data.cache_dir), split["labeled"], len(names) + 1, k)
    return [names[c - 1] for c in ids]


def _stats(values: list[float | None]) -> tuple[float, float | None, int]:
    """Mean and sample std (ddof=1; None for one seed) of the finite values, and their count."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), None, 0
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else None), int(a.size)


class MixedRunsError(ValueError):
    """Runs that cannot share one table (other classes, data sets, or two runs of one seed)."""


def build_table(records: Sequence[Mapping[str, Any]], k: int = 4) -> dict[str, Any]:
    """Rows (one per method, papers' order) with mean/std over seeds of every column."""
    from scdl.reporting.statistics import runs_by_seed, seed_order

    if not records:
        raise ValueError("no runs with eval/test_paper/metrics.json")
    classes = records[0]["classes"]
    for r in records:
        if r["classes"] != classes:
            raise MixedRunsError(f"{r['run']}: classes differ from the other runs' ({classes})")
    data_sets = sorted({r["data"] for r in records})
    if len(data_sets) > 1:
        raise MixedRunsError(
            f"runs of {len(data_sets)} data sets ({', '.join(data_sets)}) below one folder: a "
            "paper table is one data set (sweep one data set per sweep_name, e.g. the default "
            "decision_${data.name})"
        )
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["method"]].append(r)
    for method, rs in groups.items():
        try:
            runs_by_seed(rs, method)
        except ValueError as err:
            raise MixedRunsError(str(err)) from None

    def order(name: str) -> tuple:
        base = name.split(" (")[0]
        rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
        return (rank, name)

    rows = []
    for method in sorted(groups, key=order):
        rs = sorted(groups[method], key=lambda r: seed_order(r["seed"]))
        row: dict[str, Any] = {
            "method": method,
            "seeds": [r["seed"] for r in rs],
            "dice": _stats([r["dice"] for r in rs]),
            "asd": _stats([r["asd"] for r in rs]),
            "per_class": {c: _stats([r["per_class"][c] for r in rs]) for c in classes},
        }
        rows.append(row)
    minority = _minority(records, k)
    return {
        "classes": classes,
        "minority": minority,
        "rows": rows,
        "paired": paired_comparisons(groups, minority, [r["method"] for r in rows]),
    }


def framework_without_scdl(method: str) -> str:
    """The row a method is compared with: ``GA-CPS + SCDL (plus)`` -> ``GA-CPS``."""
    return method.split(" (")[0].replace(" + SCDL", "")


def paired_comparisons(
    groups: Mapping[str, Sequence[Mapping[str, Any]]],
    minority: list[str],
    order: list[str],
    n_boot: int = 10000,
) -> list[dict[str, Any]]:
    """Each SCDL row against its framework without SCDL, paired by seed and test case: the
    :func:`scdl.reporting.statistics.compare` results over all classes (``mean``, the primary
    endpoint, claimed by Holm over these rows) and over the ``minority`` classes (descriptive).
    Rows without a counterpart or without a common seed are left out (logged)."""
    from scdl.reporting.statistics import claim_primary, compare_runs

    out = []
    for method in order:
        base = framework_without_scdl(method)
        if base == method or base not in groups:
            continue
        try:
            pair = compare_runs(groups[base], groups[method], minority, n_boot)
        except (ValueError, KeyError) as err:  # no common seed or case, or no per-case values
            log.warning("paired statistics %s vs %s skipped: %s", method, base, err)
            continue
        out.append({"method": method, "baseline": base, **pair})
    claim_primary(out)
    return out


def paired_markdown(table: dict) -> str:
    """The paired comparisons of :func:`paired_comparisons` as a Markdown table ('' if none)."""
    if not table.get("paired"):
        return ""

    from scdl.reporting.statistics import format_cell, format_needed

    lines = [
        "| Method | vs | seeds | cases | Δ Avg Dice [95 % CI] | p | Δ minority Dice [95 % CI] | p | seeds for ±3 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in table["paired"]:
        seeds = ",".join(str(s) for s in c["mean"]["seeds"])
        lines.append(
            f"| {c['method']} | {c['baseline']} | {seeds} | {c['mean']['num_cases']} | "
            f"{format_cell(c['mean'])} | {format_cell(c['minority'])} | "
            f"{format_needed(c['mean'], c['minority'])} |"
        )
    lines += [
        "",
        "Paired differences (Dice points; pairs: same seed, same test case, same split and "
        "preprocessing): the mean of the seeds x cases table; 95 % interval: two-way random effects "
        "(seeds and test cases both random: a new seed on new cases of this kind); p: its t test, "
        "Holm-adjusted over the Avg Dice comparisons of this table (the primary endpoint); * = "
        "claimed (Holm p < 0.05); the minority column is descriptive (no claim); seeds for ±3: seed "
        "pairs for a ±3-point interval on these cases at the measured spread - at its 80 % upper "
        "bound ('more cases': the case variance alone is wider).",
    ]
    return "\n".join(lines)


PAIRED_STATS = (
    "diff", "ci_lo", "ci_hi", "p", "p_holm", "claimed", "boot_lo", "boot_hi",
    "t_ci_lo", "t_ci_hi", "wilcoxon_p", "seeds_for_3", "seeds_for_3_upper", "no_interval",
)  # fmt: skip


def paired_values(c: dict) -> list[Any]:
    """The :data:`PAIRED_STATS` of one comparison (None where not computed)."""
    ci, boot, t_ci = (c.get(k) or (None, None) for k in ("ci", "boot_ci", "t_ci"))
    return [
        c["diff"], *ci, c.get("p"), c.get("p_holm"), bool(c.get("claimed")), *boot, *t_ci,
        c["wilcoxon_p"], c.get("seeds_needed"), c.get("seeds_needed_upper"), c.get("no_interval"),
    ]  # fmt: skip


def paired_rows(table: dict) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the paired comparisons (CSV and W&B table): differences in [0, 1]."""
    columns = ["method", "baseline", "seeds", "cases"]
    columns += [f"{w}_{s}" for w in ("dice", "minority") for s in PAIRED_STATS]
    rows = []
    for c in table.get("paired", []):
        row = [c["method"], c["baseline"], " ".join(str(s) for s in c["mean"]["seeds"])]
        row.append(c["mean"]["num_cases"])
        for key in ("mean", "minority"):
            row += paired_values(c[key])
        rows.append(row)
    return columns, rows


def write_paired_csv(table: dict, path: Path) -> None:
    columns, rows = paired_rows(table)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)


def _cell(stats: tuple[float, float | None, int], scale: float) -> str:
    mean, std, n = stats
    if n == 0:
        return "–"
    return f"{mean * scale:.1f}" if std is None else f"{mean * scale:.1f} ± {std * scale:.1f}"


def _short(name: str, minority: list[str]) -> str:
    return SHORT_NAMES.get(name, name) + ("*" if name in minority else "")


def to_markdown(table: dict) -> str:
    classes, minority = table["classes"], table["minority"]
    heads = ["Method", "Seeds", "Avg Dice %", "Avg ASD (vox)"]
    heads += [_short(c, minority) for c in classes]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in table["rows"]:
        cells = [
            row["method"],
            ",".join(str(s) for s in row["seeds"]),
            _cell(row["dice"], 100),
            _cell(row["asd"], 1),
        ] + [_cell(row["per_class"][c], 100) for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Mean ± sample std (ddof=1) over seeds of the per-run test means (paper protocol: "
        "160x160x80 grid, ASD in voxels). * minority classes (fewest labeled voxels): "
        + ", ".join(minority)
        + "."
    )
    paired = paired_markdown(table)
    if paired:
        lines += ["", paired]
    return "\n".join(lines)


def write_csv(table: dict, path: Path) -> None:
    classes = table["classes"]
    fields = ["method", "seeds", "n", "dice_mean", "dice_std", "asd_mean", "asd_std"]
    fields += [f"{c}_{s}" for c in classes for s in ("mean", "std")]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for row in table["rows"]:
            vals = [row["method"], " ".join(str(s) for s in row["seeds"]), row["dice"][2]]
            vals += [row["dice"][0], row["dice"][1], row["asd"][0], row["asd"][1]]
            vals += [row["per_class"][c][i] for c in classes for i in (0, 1)]
            w.writerow(["" if v is None else v for v in vals])


def plot_per_class(table: dict, path: Path) -> Path:
    """Per-class Dice bars (mean, sample-std whiskers), one bar colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, len(table["classes"]) * 0.9), 4))
    draw_per_class(table, ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_per_class(table: dict, ax: Any, ylabel: str = "test Dice % (paper protocol)") -> None:
    """The bars of :func:`plot_per_class` on a given matplotlib axis (notebooks draw inline)."""
    classes, rows = table["classes"], table["rows"]
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        means = [row["per_class"][c][0] * 100 for c in classes]
        stds = [(row["per_class"][c][1] or 0.0) * 100 for c in classes]
        ax.bar(x + i * width, means, width, yerr=stds, capsize=2, label=row["method"])
    ax.set_xticks(x + width * (len(rows) - 1) / 2)
    ax.set_xticklabels([_short(c, table["minority"]) for c in classes])
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Per-class Dice by method (* minority classes)")


def plot_paired(table: dict, path: Path, against: str | None = None) -> Path | None:
    """Forest plot of the paired comparisons: per row the difference (dot), its random-effects
    95 % interval (thick) and the crossed bootstrap (thin), for Avg Dice and the minority classes;
    a line at 0; red = claimed (Holm over the primary endpoint); no bar where there is no
    interval. ``against``: what every row is compared with (the x axis then reads "row -
    against"; default: the same method without SCDL, as in the paper table). None (nothing
    written) without comparisons."""
    if not table.get("paired"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = table["paired"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 1.2 + 0.55 * len(pairs)), sharey=True)
    for ax, key, title in zip(
        axes, ("mean", "minority"), ("Δ Avg Dice", "Δ minority-class Dice"), strict=True
    ):
        for i, c in enumerate(pairs):
            res, y = c[key], len(pairs) - 1 - i
            if res.get("boot_ci") is not None:
                ax.plot([v * 100 for v in res["boot_ci"]], [y, y], color="0.6", lw=1.5)
            if res.get("ci") is not None:
                ax.plot([v * 100 for v in res["ci"]], [y, y], color="C0", lw=5, alpha=0.7)
            ax.plot(res["diff"] * 100, y, "o", color="C3" if res.get("claimed") else "k")
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set_title(title)
        ax.set_xlabel(
            f"Dice points (row - {against})" if against else "Dice points (with SCDL - without)"
        )
    axes[0].set_yticks(range(len(pairs)))
    axes[0].set_yticklabels(
        [f"{c['method']} (n={len(c['mean']['seeds'])})" for c in reversed(pairs)], fontsize=8
    )
    fig.suptitle(
        "Paired differences: random-effects 95 % over seeds and cases (thick), crossed bootstrap "
        "(thin), red = claimed (Holm over Avg Dice)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_to_wandb(table: dict, files: dict[str, Path], group: str, project: str | None) -> bool:
    """A W&B ``summary`` run in the sweep's group: the table, per-class Dice bars by method, and
    the figure. No-op with ``WANDB_MODE=disabled``."""
    from scdl.utils.config import wandb_mode

    mode = wandb_mode()
    if mode == "disabled":
        return False
    import wandb

    classes = table["classes"]
    columns: list[str | int] = ["method", "seeds", "dice_mean", "dice_std", "asd_mean", "asd_std"]
    columns += [f"{c}_mean" for c in classes]
    data = [
        [
            r["method"],
            ",".join(str(s) for s in r["seeds"]),
            r["dice"][0],
            r["dice"][1],
            r["asd"][0],
            r["asd"][1],
        ]
        + [r["per_class"][c][0] for c in classes]
        for r in table["rows"]
    ]
    run = wandb.init(
        project=project or "scdl",
        group=group,
        job_type="summary",
        name=f"{group}/paper_table",
        tags=["summary", "paper_table"],
        dir=str(files["md"].parent),
        mode="offline" if mode == "offline" else "online",
    )
    try:
        wtable = wandb.Table(columns=columns, data=data)
        logs: dict[str, Any] = {
            "paper_table/table": wtable,
            "paper_table/per_class_figure": wandb.Image(str(files["png"])),
            "paper_table/avg_dice": wandb.plot.bar(
                wtable, "method", "dice_mean", title="Avg test Dice by method"
            ),
        }
        for row in table["rows"]:  # one per-class bar chart per method (ablation)
            t = wandb.Table(
                columns=["class", "dice"],
                data=[[c, row["per_class"][c][0]] for c in classes],
            )
            logs[f"paper_table/per_class/{row['method']}"] = wandb.plot.bar(
                t, "class", "dice", title=f"Per-class test Dice: {row['method']}"
            )
        if table.get("paired"):
            paired_columns, rows = paired_rows(table)
            logs["paper_table/paired"] = wandb.Table(
                columns=cast("list[str | int]", paired_columns), data=rows
            )
            if files.get("paired_png") is not None:
                logs["paper_table/paired_figure"] = wandb.Image(str(files["paired_png"]))
            for c in table["paired"]:  # searchable scalars in the run's summary
                for key, name in (("mean", "dice"), ("minority", "minority_dice")):
                    prefix = f"paired/{c['method']}/{name}"
                    run.summary[f"{prefix}_diff"] = c[key]["diff"]
                    ci = c[key].get("ci") or (None, None)
                    run.summary[f"{prefix}_ci_lo"], run.summary[f"{prefix}_ci_hi"] = ci
                    run.summary[f"{prefix}_p"] = c[key].get("p_holm", c[key].get("p"))
        run.log(logs)
    finally:
        wandb.finish()
    return True


def write_paper_table(
    roots: list[Path], out_dir: Path, k: int = 4, wandb_group: str | None = None
) -> dict[str, Path]:
    """Builds the table from the runs below ``roots`` and writes it to ``out_dir``."""
    table = build_table(collect_runs(roots), k)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "md": out_dir / "paper_table.md",
        "csv": out_dir / "paper_table.csv",
        "png": out_dir / "paper_table.png",
        "paired_csv": out_dir / "paper_table_paired.csv",
    }
    files["md"].write_text(to_markdown(table) + "\n")
    write_csv(table, files["csv"])
    write_paired_csv(table, files["paired_csv"])
    paired_png = plot_paired(table, out_dir / "paper_table_paired.png")
    if paired_png is not None:
        files["paired_png"] = paired_png
    plot_per_class(table, files["png"])
    print(to_markdown(table))
    if wandb_group is not None:
        log_to_wandb(table, files, wandb_group, project=None)
    return files


def per_run_markdown(roots: list[Path], split: str = "test") -> str:
    """The papers' layout with one row per run (not per method: ``summary --paper``), from
    ``<run>/eval/<split>_paper/metrics.json``.

    Avg Dice (%) and Avg ASD (voxels) are mean +- std over cases of the per-case class means;
    per-class Dice (%) is the mean over cases.
    """
    rows, names = [], None
    for run, path in runs_holding(roots, Path("eval") / f"{split}_paper" / "metrics.json"):
        cfg = load_config(run) or OmegaConf.create()
        m = load_metrics(path)
        names = names or m["classes"]
        if m["classes"] != names:
            raise SystemExit(f"{path}: classes differ from the other runs, cannot share one table")
        ov = m["overall"]
        cells = [
            str(cfg.get("experiment_name", run.name)),
            str(cfg.get("ablation_name", "none")),
            str(cfg.get("seed", "?")),
            f"{ov['dice']['mean'] * 100:.1f} ± {ov['dice']['std'] * 100:.1f}",
            f"{ov['asd']['mean']:.1f} ± {ov['asd']['std']:.1f}",
        ] + [f"{m['per_class'][n]['dice']['mean'] * 100:.1f}" for n in names]
        rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        raise SystemExit(
            f"no {split}_paper/metrics.json below {roots}: run src/eval.py protocol=paper"
        )
    heads = ["experiment", "ablation", "seed", "Avg Dice %", "Avg ASD (vox)"]
    heads += [SHORT_NAMES.get(n, n) for n in cast(list, names)]  # set with the first row
    return "\n".join(["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads), *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="sweep or run folders")
    parser.add_argument("-o", "--out", type=Path, default=None, help="default: the first root")
    parser.add_argument("--smallest", type=int, default=4, help="k minority classes to mark")
    args = parser.parse_args(argv)
    try:
        write_paper_table(args.roots, args.out or args.roots[0], args.smallest)
    except MixedRunsError as err:
        raise SystemExit(str(err)) from err
    except ValueError as err:
        raise SystemExit(f"{err}: run the sweep (or src/eval.py protocol=paper) first") from err


if __name__ == "__main__":
    main()
