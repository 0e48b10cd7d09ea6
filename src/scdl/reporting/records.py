"""Run records: one typed record per finished run, read from its run folder (:mod:`scdl.runs`) or
from the committed results archive, in the form every table and statistic of :mod:`scdl.reporting`
takes. Two kinds, by what a run was scored with:

- :class:`RunRecord` (the summary, the archive): the training test (``test_metrics.json``), the
  mean Dice and the Dice of the ``k`` smallest classes, the best validation Dice.
- :class:`PaperRecord` (the paper table, the notebooks): ``eval/test_paper/metrics.json`` (the
  papers' protocol) or the training test, with ASD where it was scored.

Both carry the per-case results (``result``) and the pairing hashes (``pairing``) the paired
statistics need. One naming of a run for every table: :func:`method_label`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
from omegaconf import OmegaConf

from scdl.metrics.results import class_means, load_metrics
from scdl.reporting.statistics import pairing_key, run_score
from scdl.runs import (
    PAPER_RESULTS,
    finished_record,
    load_config,
    read_split,
    resolved_container,
    runs_holding,
    train_test_results,
)

log = logging.getLogger(__name__)

ARCHIVE_VERSION = 1
SUFFIX = ".run.json"  # an archived RunRecord: results/<study>/<data>__<exp>__<ablation>__seed<N>
PLAIN_ABLATIONS = ("full", "none")


class RunRecord(TypedDict, total=False):
    """A finished run as the summary and the archive see it (Dice as fractions)."""

    run: str  # the run folder, or the archive file it was read from
    experiment: str
    ablation: str
    seed: Any
    data: str  # data.name
    dice: float  # mean over cases of each case's mean over classes
    small_dice: float  # the same over the k smallest classes
    small_classes: list[str]
    per_class: dict[str, float]  # mean over cases, per class
    result: dict  # the run's results (scdl.metrics.results schema, per-case values)
    pairing: dict[str, str] | None  # split and data hashes a pair must share
    val_dice: float | None  # best validation Dice (what variants are chosen on)


class PaperRecord(TypedDict):
    """A run as the paper table sees it (one row per method, mean over seeds)."""

    run: Path
    cfg: Any  # the run's saved config (DictConfig)
    method: str  # :func:`method_label`
    seed: Any
    data: str
    classes: list[str]
    dice: float
    asd: float | None  # None: the run was scored on Dice only (the training test)
    per_class: dict[str, float]
    result: dict
    pairing: dict[str, str] | None


def method_label(cfg: Any) -> str:
    """Row name: the experiment's ``method_name``, plus a non-default SCDL ablation."""
    name = str(cfg.get("method_name") or cfg.get("experiment_name", "?"))
    ablation = str(cfg.get("ablation_name", "none"))
    if ablation == "baseline":  # the SCDL experiment with the plug-in switched off
        return name.replace(" + SCDL", "")
    return name if ablation in PLAIN_ABLATIONS else f"{name} ({ablation})"


def data_set_name(cfg: Any) -> str:
    """The run's ``data.name`` ('?' for configs without one)."""
    return str(cfg.get("data", {}).get("name", "?"))


def run_pairing(run: Path, cfg: Any) -> dict[str, str] | None:
    """The run's :func:`scdl.reporting.statistics.pairing_key` (split.json and the data config),
    or None for a run folder without ``split.json``."""
    split = read_split(run)
    if split is None:
        return None
    return pairing_key(split, resolved_container(cfg.get("data", OmegaConf.create())))


def run_record(run: Path, cfg: Any, metrics: dict, asd: bool = True) -> PaperRecord:
    """A paper-table record of one run from its results (the schema of
    :mod:`scdl.metrics.results`); ``asd=False`` for results that score Dice only (the training
    test)."""
    return {
        "run": run,
        "cfg": cfg,
        "method": method_label(cfg),
        "seed": cfg.get("seed"),
        "data": data_set_name(cfg),
        "classes": list(metrics["classes"]),
        "dice": metrics["overall"]["dice"]["mean"],
        "asd": metrics["overall"]["asd"]["mean"] if asd else None,
        "per_class": {n: metrics["per_class"][n]["dice"]["mean"] for n in metrics["classes"]},
        "result": metrics,  # per-case values, for the paired statistics
        "pairing": run_pairing(run, cfg),  # split and data hashes: what a pair must share
    }


def collect_runs(roots: list[Path]) -> list[PaperRecord]:
    """One record per run below ``roots`` with paper-protocol test results."""
    records = []
    for run, path in runs_holding(roots, PAPER_RESULTS):
        cfg = load_config(run)
        if cfg is None:
            log.warning("%s: no .hydra/config.yaml, skipped", run)
            continue
        records.append(run_record(run, cfg, load_metrics(path)))
    return records


def collect(roots: list[Path], k: int = 4) -> list[RunRecord]:
    """One record per finished run (training test results and a saved config) below ``roots``."""
    from scdl.data.class_stats import smallest_classes

    records: list[RunRecord] = []
    for run, result in train_test_results(roots):
        cfg = load_config(run)
        if cfg is None:
            continue
        finished = finished_record(run) or {}
        res = load_metrics(result)
        split = cast(dict, read_split(run))  # training writes split.json into the run folder
        names = res["classes"]
        small = smallest_classes(Path(cfg.data.cache_dir), split["labeled"], len(names) + 1, k)
        mean = np.asarray(class_means(res, "dice"), dtype=float)
        small_names = [names[c - 1] for c in small]
        records.append(
            {
                "run": str(run),
                "experiment": cfg.get("experiment_name", "?"),
                "ablation": cfg.get("ablation_name", "none"),
                "seed": cfg.get("seed"),
                "data": data_set_name(cfg),
                # cases first (a case's mean over its classes), then the mean over cases: the
                # order of the paired differences, so column means and differences agree
                "dice": run_score(res),
                "small_dice": run_score(res, small_names),
                "small_classes": small_names,
                "per_class": dict(zip(names, mean.tolist(), strict=True)),
                "result": res,  # per-case values for the paired statistics
                "pairing": run_pairing(run, cfg),  # split and data hashes a pair must share
                # what a variant is chosen on (never the test cases): the run's best validation
                "val_dice": finished.get("metrics", {}).get("best/val/dice"),
            }
        )
    return records


def load_records(roots: Sequence[Path]) -> list[RunRecord]:
    """The archived records below ``roots`` (``*.run.json`` files of
    :mod:`scdl.reporting.archive`) in the form :func:`collect` returns (``run``: the archive
    file)."""
    records = []
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(root.rglob(f"*{SUFFIX}"))
        for path in files:
            data = json.loads(path.read_text())
            if data.get("archive_version") != ARCHIVE_VERSION:
                raise SystemExit(
                    f"{path}: archive version {data.get('archive_version')}, this code reads "
                    f"{ARCHIVE_VERSION}"
                )
            records.append(cast(RunRecord, {**data, "run": str(path)}))
    return records
