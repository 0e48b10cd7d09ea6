"""The one results schema of the project, its writer, reader and text table.

Used by the training test (``SemiSupervisedModule.on_test_epoch_end``: ``<run>/test_metrics.*``),
``src/eval.py`` (``<run>/eval/<split>_<protocol>/metrics.*``) and folder evaluation
(``src/eval.py pred_dir=... ref_dir=...``: ``<output_dir>/metrics.*``), and read by
:mod:`scdl.reporting.summary`.

Schema (:func:`aggregate_metrics`; JSON-ready, NaN stored as ``null``)::

    {"protocol": str | None,            # "train_test", "paper", "standard"
     "metrics": ["dice", ...],          # metric names, in column order
     "classes": [...],                  # foreground class names (label 1..C-1)
     "num_cases": int,
     "per_class": {class: {metric: {"mean", "std", "n"}}},
     "overall": {metric: {"mean", "std"}},
     "per_case": [{"case": id, "values": {class: {metric: value}}}],
     ...}                               # writer-specific extras (ckpt, split, settings, ...)

Files (:func:`save_metrics`, ``stem`` e.g. ``metrics`` or ``test_metrics``):

* ``<stem>.json``: the whole dict;
* ``<stem>.csv``: one row per class plus a last ``mean`` row, columns ``class``,
  ``<metric>_mean``, ``<metric>_std`` for every metric;
* ``<stem>_per_case.csv``: columns ``case``, ``class``, one per metric; one row per (case, class).

:func:`load_metrics` also reads the legacy ``test_dice.json`` of older run folders
(``{"class_names", "per_case", "mean", "std", "mean_dice", "case_ids"}``) into this schema.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scdl.data.labels import assert_unique_class_names
from scdl.runs import LEGACY_TRAIN_TEST_JSON

KNOWN_METRICS: tuple[str, ...] = ("dice", "asd", "hd95", "nsd")


def _nan_stats(x: np.ndarray, axis: int | None = None) -> tuple[Any, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN, silently
        return np.nanmean(x, axis=axis), np.nanstd(x, axis=axis)


def _num(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def aggregate_metrics(
    cases: Sequence[Mapping[str, Any]],
    class_names: Sequence[str] | None = None,
    case_ids: Sequence[str] | None = None,
    protocol: str | None = None,
) -> dict[str, Any]:
    """Per-class mean +- std over cases and overall means.

    Args:
        cases: per-case results, each metric -> (C-1,) values (as returned by the case functions).
        class_names: names of the foreground classes (default ``class_1`` ...).
        case_ids: optional case identifiers, stored with the per-case values.
        protocol: optional label stored in the result.

    Returns a JSON-ready dict (NaN -> None)::

        {"protocol", "metrics": [...], "classes": [...], "num_cases",
         "per_class": {class: {metric: {"mean", "std", "n"}}},
         "overall": {metric: {"mean", "std"}},
         "per_case": [{"case", "values": {class: {metric: value}}}]}

    Per-class mean/std are over cases (population std, as ``np.std``), ignoring NaN. The overall mean
    is the mean of the per-class means (each class weighs the same; equals the paper's "Avg");
    the overall std is the std over cases of the per-case class average.
    """
    if not cases:
        raise ValueError("no cases to aggregate")
    metrics = [m for m in KNOWN_METRICS if m in cases[0]] + [
        m for m in cases[0] if m not in KNOWN_METRICS
    ]
    stacked = {
        m: np.stack([np.asarray(c[m], dtype=np.float64).reshape(-1) for c in cases])
        for m in metrics
    }  # (cases, C-1)
    n_cls = stacked[metrics[0]].shape[1]
    names = (
        list(class_names)
        if class_names is not None
        else [f"class_{i}" for i in range(1, n_cls + 1)]
    )
    if len(names) != n_cls:
        raise ValueError(f"{len(names)} class names for {n_cls} classes")
    assert_unique_class_names(names, source="class names of the results")  # keyed by name
    ids = list(case_ids) if case_ids is not None else [str(i) for i in range(len(cases))]
    per_class: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in names}
    overall: dict[str, dict[str, Any]] = {}
    for m, arr in stacked.items():
        mean, std = _nan_stats(arr, axis=0)
        valid = np.sum(~np.isnan(arr), axis=0)
        for j, n in enumerate(names):
            per_class[n][m] = {"mean": _num(mean[j]), "std": _num(std[j]), "n": int(valid[j])}
        class_mean, _ = _nan_stats(mean)
        _, case_std = _nan_stats(_nan_stats(arr, axis=1)[0])
        overall[m] = {"mean": _num(class_mean), "std": _num(case_std)}
    per_case = [
        {
            "case": cid,
            "values": {
                n: {m: _num(stacked[m][i, j]) for m in metrics} for j, n in enumerate(names)
            },
        }
        for i, cid in enumerate(ids)
    ]
    return {
        "protocol": protocol,
        "metrics": metrics,
        "classes": names,
        "num_cases": len(cases),
        "per_class": per_class,
        "overall": overall,
        "per_case": per_case,
    }


def _fmt_csv(v: float | None) -> str:
    return "nan" if v is None else repr(float(v))


def save_metrics(
    summary: Mapping[str, Any], out_dir: str | Path, stem: str = "metrics"
) -> dict[str, Path]:
    """Writes ``{stem}.json`` (the whole summary), ``{stem}.csv`` (class rows + a ``mean`` row,
    columns ``<metric>_mean``, ``<metric>_std``) and ``{stem}_per_case.csv`` (case, class, metrics).

    Returns the paths by kind (``json``, ``csv``, ``per_case_csv``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = list(summary["metrics"])
    paths = {
        "json": out / f"{stem}.json",
        "csv": out / f"{stem}.csv",
        "per_case_csv": out / f"{stem}_per_case.csv",
    }
    paths["json"].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
        for name in summary["classes"]:
            stats = summary["per_class"][name]
            w.writerow([name] + [_fmt_csv(stats[m][s]) for m in metrics for s in ("mean", "std")])
        ov = summary["overall"]
        w.writerow(["mean"] + [_fmt_csv(ov[m][s]) for m in metrics for s in ("mean", "std")])
    with paths["per_case_csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "class", *metrics])
        for row in summary.get("per_case", []):
            for name, vals in row["values"].items():
                w.writerow([row["case"], name] + [_fmt_csv(vals[m]) for m in metrics])
    return paths


_PERCENT_METRICS = ("dice", "nsd")


def format_metrics_table(
    summary: Mapping[str, Any],
    use_rich: bool = False,
    percent: bool = True,
    digits: int = 2,
    title: str | None = None,
) -> str:
    """Renders a class x metric table (cells ``mean ± std``, last row the overall mean) as text.

    ``percent`` shows Dice and NSD x100 (as in the papers); distances keep their unit. With
    ``use_rich`` the table is drawn by ``rich`` (box characters, no colour codes).
    """
    metrics = list(summary["metrics"])

    def cell(stats: Mapping[str, Any], m: str) -> str:
        mean, std = stats["mean"], stats["std"]
        if mean is None:
            return "-"
        k = 100.0 if percent and m in _PERCENT_METRICS else 1.0
        return f"{mean * k:.{digits}f} ± {(std or 0.0) * k:.{digits}f}"

    header = ["class"] + [f"{m} (%)" if percent and m in _PERCENT_METRICS else m for m in metrics]
    rows = [
        [n] + [cell(summary["per_class"][n][m], m) for m in metrics] for n in summary["classes"]
    ]
    footer = ["mean"] + [cell(summary["overall"][m], m) for m in metrics]
    title = (
        title
        if title is not None
        else f"{summary.get('protocol') or 'metrics'} ({summary['num_cases']} cases)"
    )

    if use_rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            table.add_row(*r)
        table.add_section()
        table.add_row(*footer)
        buf = io.StringIO()
        Console(file=buf, width=200, color_system=None, force_terminal=False).print(table)
        return buf.getvalue()

    widths = [max(len(r[i]) for r in [header, *rows, footer]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            (c.ljust(w) if i == 0 else c.rjust(w))
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    sep = "-" * len(line(header))
    return "\n".join([title, line(header), sep, *map(line, rows), sep, line(footer)]) + "\n"


def _legacy_test_dice(old: Mapping[str, Any]) -> dict[str, Any]:
    """The pre-schema ``test_dice.json`` of the training test as a :func:`aggregate_metrics` dict."""
    names = list(old["class_names"])
    rows = old.get("per_case") or []
    if rows:
        nan = float("nan")
        cases = [{"dice": [nan if v is None else v for v in row]} for row in rows]
        ids = old.get("case_ids") or None
        summary = aggregate_metrics(cases, names, ids if ids and len(ids) == len(rows) else None)
    else:  # hand-written or truncated: only the class means
        summary = {
            "metrics": ["dice"],
            "classes": names,
            "num_cases": 0,
            "per_class": {
                n: {"dice": {"mean": m, "std": s, "n": None}}
                for n, m, s in zip(
                    names, old["mean"], old.get("std") or [None] * len(names), strict=True
                )
            },
            "overall": {"dice": {"mean": old.get("mean_dice"), "std": None}},
            "per_case": [],
        }
    # the class means as they were written (float32 means), not recomputed
    for n, m in zip(names, old["mean"], strict=True):
        summary["per_class"][n]["dice"]["mean"] = _num(m) if m is not None else None
    if old.get("mean_dice") is not None:
        summary["overall"]["dice"]["mean"] = _num(old["mean_dice"])
    summary.update(
        {"protocol": "train_test", "ckpt": old.get("ckpt"), "legacy": LEGACY_TRAIN_TEST_JSON}
    )
    return summary


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Reads a results JSON of this schema, or a legacy ``test_dice.json`` (converted)."""
    data = json.loads(Path(path).read_text())
    if "per_class" in data and "classes" in data:
        return data
    if "class_names" in data and "mean" in data:
        return _legacy_test_dice(data)
    raise ValueError(f"{path}: not a results file (neither the metrics schema nor test_dice.json)")


def class_means(summary: Mapping[str, Any], metric: str = "dice") -> list[float]:
    """Per-class means of ``metric`` in class order (NaN where undefined)."""
    return [
        float("nan") if (v := summary["per_class"][n][metric]["mean"]) is None else float(v)
        for n in summary["classes"]
    ]
