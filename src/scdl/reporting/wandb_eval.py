"""The W&B run of an evaluation: ``src/eval.py`` logs a checkpoint's scores as an ``eval`` run
grouped with its training run (same project, group = ``experiment_name``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from scdl.inference.checkpoint import load_run_config

log = logging.getLogger(__name__)


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
    # lightning sets rank on the function object at import; its stub does not declare it
    if lcfg is None or mode == "disabled" or rank_zero_only.rank != 0:  # type: ignore[attr-defined]
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
        columns: list[str | int] = ["class"]
        columns += [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
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


def log_evaluation(cfg: DictConfig, summary: dict) -> bool | None:
    """Logs an :func:`scdl.evaluation.evaluate.evaluate` summary to W&B when the eval config has a
    logger and the run was trained with W&B; stores the outcome as ``summary["wandb"]``. A run
    trained without W&B (``logger=csv``) gets no W&B eval run either (None)."""
    if not cfg.get("logger"):
        return None
    run_cfg, run_dir = load_run_config(summary["ckpt"])
    if _wandb_logger_cfg(run_cfg) is None:
        log.info("no W&B run: %s was trained without a W&B logger", run_dir.name)
        return None
    summary["wandb"] = log_to_wandb(cfg, run_cfg, summary, Path(summary["files"]["json"]).parent)
    return summary["wandb"]
