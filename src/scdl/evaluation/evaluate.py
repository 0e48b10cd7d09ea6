"""Evaluate a trained checkpoint: ``python src/eval.py ckpt_path=<run>/checkpoints/best-....ckpt
[protocol=paper|standard] [split=test|val|all] [save_predictions=true] [data=...]``.

Steps: rebuild the module from the run config (:mod:`scdl.evaluation.checkpoint`), run
sliding-window inference on every case of the split (preprocessed cache), score each case with
:mod:`scdl.evaluation.protocols` (Dice, ASD, HD95, NSD per foreground class) in the chosen protocol,
then aggregate (mean ± std over cases), print, save ``metrics.{json,csv}`` (+ per-case CSV) in the
one results schema of :mod:`scdl.metrics.results` and log to W&B. Protocols
(``docs/method.md`` §5):

* ``paper``: prediction and label resized to 160 x 160 x 80 (nearest), distances in voxels of that
  grid, 128 penalty for a class missing on one side, both-empty = Dice 1 / ASD 0, all-empty
  prediction = all 0 — the numbers of the published tables.
* ``standard``: the cache's native spacing, distances in mm (ASD = symmetric ASSD, HD95 and NSD as
  MONAI's metrics compute them), classes absent from both maps excluded (NaN); Dice equals the training ``test/dice`` when every class is present.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from scdl.evaluation.checkpoint import (
    load_module_from_checkpoint,
    resolve_checkpoint,
    select_device,
    with_class_mismatch_flag,
)
from scdl.evaluation.predict import labels_to_original_grid, save_label_nifti, segment_volume
from scdl.evaluation.protocols import compute_case_metrics
from scdl.metrics.results import aggregate_metrics, format_metrics_table, save_metrics
from scdl.utils.errors import InputError
from scdl.utils.progress import progress_iter

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "labeled", "all")


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


def select_cases(
    run_cfg: DictConfig,
    run_dir: Path,
    split: str,
    split_file: str | None = None,
    use_run_split: bool = True,
) -> tuple[list[str], str]:
    """Case ids to evaluate and where they came from.

    ``split``: ``test`` / ``val`` / ``labeled`` (a part of the split) or ``all`` (every labeled case
    of the cache). The split is, in order: ``split_file`` (JSON), the run's own ``split.json`` (when
    ``use_run_split``, i.e. the data was not overridden), else the data config's split
    (``data.module.split_file`` or the seeded draw, as training would make it).
    """
    from hydra.utils import instantiate

    from scdl.data.prepare import read_index
    from scdl.data.splits import load_split_file

    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        index = read_index(run_cfg.data.cache_dir)
        return [c["case_id"] for c in index["cases"] if c.get("labeled", True)], "cache index"
    if split_file:
        parts, source = load_split_file(split_file), str(split_file)
    elif use_run_split and (run_dir / "split.json").is_file():
        parts, source = load_split_file(run_dir / "split.json"), str(run_dir / "split.json")
    else:
        datamodule = instantiate(run_cfg.data.module, _convert_="all")
        parts, source = datamodule.prepare_split(), "data config"
    ids = list(getattr(parts, split))
    if not ids:
        raise InputError(f"the {split} split of {source} is empty")
    return ids, source


def default_output_dir(run_dir: Path, ckpt: Path, split: str, protocol: str) -> Path:
    """``<run>/eval/<split>_<protocol>`` for the best checkpoint, ``<run>/eval/<ckpt stem>/...``
    for any other (``last.ckpt``, a resumed one) so that evaluations never overwrite each other."""
    base = run_dir / "eval"
    if not ckpt.name.startswith("best"):
        base = base / ckpt.stem
    return base / f"{split}_{protocol}"


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def case_metric_kwargs(
    protocol: str, metrics_cfg: Mapping | None, spacing: list[float]
) -> dict[str, Any]:
    """Keyword arguments of :func:`compute_case_metrics` for one case.

    ``metrics_cfg``: ``nsd_tolerance`` (mm for ``standard``, voxels of the resized grid for
    ``paper``), ``paper: {shape, penalty, empty_prediction_rule}``, ``standard: {empty_distance}``.
    """
    m = dict(metrics_cfg or {})
    kw: dict[str, Any] = {"nsd_tolerance": float(m.get("nsd_tolerance", 1.0))}
    if protocol == "paper":
        p = dict(m.get("paper") or {})
        shape = p.get("shape", (160, 160, 80))
        kw["target_shape"] = tuple(int(s) for s in shape) if shape is not None else None
        kw["penalty"] = float(p.get("penalty", 128.0))
        kw["empty_prediction_rule"] = bool(p.get("empty_prediction_rule", True))
    elif protocol == "standard":
        s = dict(m.get("standard") or {})
        kw["spacing"] = tuple(float(v) for v in spacing)
        if s.get("empty_distance") is not None:
            kw["empty_distance"] = float(s["empty_distance"])
    else:
        raise InputError(f"protocol must be paper|standard, got {protocol!r}")
    return kw


# ----------------------------------------------------------------------------------------------
# W&B
# ----------------------------------------------------------------------------------------------


def _wandb_logger_cfg(cfg: DictConfig) -> DictConfig | None:
    for lcfg in (cfg.get("logger") or {}).values():
        if isinstance(lcfg, DictConfig) and "WandbLogger" in str(lcfg.get("_target_", "")):
            return lcfg
    return None


def log_to_wandb(cfg: DictConfig, run_cfg: DictConfig, summary: Mapping, out_dir: Path) -> bool:
    """Logs the overall and per-class means plus a per-class table to a W&B ``eval`` run, grouped
    with the training run (same project / ``experiment_name``). Rank zero only; no-op without a
    W&B logger config or with ``WANDB_MODE=disabled``. Returns whether something was logged."""
    from lightning.pytorch.utilities import rank_zero_only

    from scdl.utils.config import wandb_mode

    lcfg = _wandb_logger_cfg(cfg)
    mode = wandb_mode()
    if lcfg is None or mode == "disabled" or rank_zero_only.rank != 0:
        return False
    import wandb

    prefix = f"eval/{summary['split']}_{summary['protocol']}"
    exp = str(run_cfg.get("experiment_name", "default"))
    tags = [str(t) for t in (run_cfg.get("tags") or [])] + ["eval", str(summary["protocol"])]
    run = wandb.init(
        project=lcfg.get("project") or "scdl",
        entity=lcfg.get("entity"),
        group=exp,
        name=f"{exp}/{run_cfg.run_name}/{Path(summary['ckpt']).stem}/{prefix[5:]}",
        job_type="eval",
        tags=tags,
        dir=str(out_dir),
        mode="offline" if mode == "offline" else "online",
        config={
            "ckpt": summary["ckpt"],
            "split": summary["split"],
            "protocol": summary["protocol"],
            "inference": summary["inference"],
            "run_dir": summary["run_dir"],
        },
    )
    try:
        flat: dict[str, Any] = {}
        for metric, stats in summary["overall"].items():
            if stats["mean"] is not None:
                flat[f"{prefix}/{metric}"] = stats["mean"]
        for name, per_metric in summary["per_class"].items():
            for metric, stats in per_metric.items():
                if stats["mean"] is not None:
                    flat[f"{prefix}/{metric}_{name}"] = stats["mean"]
        metrics = list(summary["metrics"])
        columns = ["class"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
        rows = [
            [name] + [summary["per_class"][name][m][s] for m in metrics for s in ("mean", "std")]
            for name in summary["classes"]
        ]
        flat[f"{prefix}/per_class"] = wandb.Table(columns=columns, data=rows)
        run.log(flat)
        for key, value in flat.items():
            if not isinstance(value, wandb.Table):
                run.summary[key] = value
    finally:
        wandb.finish()
    return True


# ----------------------------------------------------------------------------------------------
# Entry
# ----------------------------------------------------------------------------------------------


def _data_override(cfg: DictConfig) -> dict | None:
    data = cfg.get("data")
    if not data:
        return None
    # resolved here: its interpolations (${paths.data_dir}, ...) refer to the eval config
    return {"data": OmegaConf.to_container(data, resolve=True)}


def evaluate(cfg: DictConfig) -> dict:
    """Evaluates ``cfg.ckpt_path`` (``conf/eval.yaml``) and returns the summary.

    The summary is :func:`aggregate_metrics`'s dict (``per_class``, ``overall``, ``per_case``,
    ...) plus ``ckpt``, ``run_dir``, ``split``, ``split_source``, ``protocol``, ``inference``,
    ``metric_settings``, ``seconds`` and ``files`` (written paths by kind).
    """
    from scdl.data.catalog import ensure_prepared
    from scdl.data.prepare import load_cached_case

    protocol = str(cfg.get("protocol", "standard"))
    if protocol not in ("paper", "standard"):
        raise InputError(f"protocol must be paper|standard, got {protocol!r}")
    split = str(cfg.get("split", "test"))
    ckpt = resolve_checkpoint(cfg.ckpt_path)
    overrides = _data_override(cfg)
    module, run_cfg = load_module_from_checkpoint(
        ckpt, with_class_mismatch_flag(overrides, cfg), inference=cfg.get("inference")
    )
    run_dir = Path(run_cfg.run_dir)
    device = select_device(cfg.get("device", "auto"))
    module.to(device)
    precision = cfg.get("precision") or OmegaConf.select(run_cfg, "trainer.precision")

    cache = ensure_prepared(run_cfg.data)
    case_ids, split_source = select_cases(
        run_cfg, run_dir, split, cfg.get("split_file"), use_run_split=overrides is None
    )
    if cfg.get("max_cases"):
        case_ids = case_ids[: int(cfg.max_cases)]
    out_dir = (
        Path(cfg.output_dir)
        if cfg.get("output_dir")
        else default_output_dir(run_dir, ckpt, split, protocol)
    )
    num_classes = int(run_cfg.data.num_classes)
    class_names = list(run_cfg.data.class_names)
    log.info(
        "evaluating %s on %d %s case(s) (%s), protocol %s -> %s",
        ckpt.name,
        len(case_ids),
        split,
        split_source,
        protocol,
        out_dir,
    )

    t0 = time.perf_counter()
    results = []
    unknown_spacing = 0
    for case_id in progress_iter(case_ids, f"eval {split} ({protocol})", cfg.get("progress", True)):
        case = load_cached_case(cache, case_id, in_memory=True)
        if case.label is None:
            raise InputError(f"case {case_id} has no label: it cannot be evaluated")
        pred = segment_volume(module, case.image, device, precision)
        unknown_spacing += not case.meta.get("spacing_known", True)
        kwargs = case_metric_kwargs(protocol, cfg.get("metrics"), case.meta["spacing"])
        results.append(
            compute_case_metrics(pred, np.asarray(case.label), num_classes, protocol, **kwargs)
        )
        if cfg.get("save_predictions", False):
            native = labels_to_original_grid(pred, case.meta)
            save_label_nifti(
                native,
                out_dir / "predictions" / f"{case_id}.nii.gz",
                np.asarray(case.meta["original_affine"]),
                _reference_image(case.meta),
            )

    if protocol == "standard" and unknown_spacing:
        log.warning(
            "%d case(s) have no physical spacing (array layouts): standard-protocol distances "
            "are in cache voxels, not mm",
            unknown_spacing,
        )
    summary = aggregate_metrics(results, class_names[1:], case_ids, protocol)
    settings = case_metric_kwargs(protocol, cfg.get("metrics"), [1.0, 1.0, 1.0])
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    if protocol == "standard":
        settings["spacing"] = "cache spacing of each case (mm)"
    summary.update(
        {
            "ckpt": str(ckpt),
            "run_dir": str(run_dir),
            "experiment_name": str(run_cfg.get("experiment_name", "")),
            "split": split,
            "split_source": split_source,
            "inference": _inference_dict(module),
            "metric_settings": settings,
            "precision": None if precision is None else str(precision),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )
    paths = save_metrics(summary, out_dir)
    summary["files"] = {k: str(v) for k, v in paths.items()}
    title = f"{protocol} metrics, {split} ({len(case_ids)} cases) — {ckpt.name}"
    print(format_metrics_table(summary, use_rich=True, title=title))
    log.info("metrics written to %s", out_dir)
    if cfg.get("logger") and _wandb_logger_cfg(run_cfg) is None:
        # a run trained without W&B (logger=csv) gets no W&B eval run either
        log.info("no W&B run: %s was trained without a W&B logger", run_dir.name)
    elif cfg.get("logger"):
        summary["wandb"] = log_to_wandb(cfg, run_cfg, summary, out_dir)
    return summary


def _inference_dict(module: Any) -> dict:
    import dataclasses

    inf = getattr(module, "inference_cfg", None)
    if inf is None or not dataclasses.is_dataclass(inf):
        return {}
    d = dataclasses.asdict(inf)
    d["roi_size"] = [int(r) for r in d["roi_size"]]
    return d


def _reference_image(meta: Mapping):
    """The source image (header template for the prediction), when it still exists."""
    import nibabel as nib

    src = meta.get("source_image")
    if src and str(src).endswith((".nii", ".nii.gz")) and Path(src).is_file():
        ref = nib.load(src)
        if tuple(ref.shape[:3]) == tuple(meta["original_shape"]):
            return ref
    return None
