"""``train(cfg)``: compose data, model, losses and framework from the Hydra config, fit, then test the
best checkpoint. ``src/train.py`` is a thin Hydra wrapper around it; tests call it directly."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from scdl.build import build_module, setup_data
from scdl.data.splits import save_split_file
from scdl.loggers import wandb_run_id
from scdl.resume import ResumePlan, plan_resume, set_aside_orphans
from scdl.utils.config import instantiate_dict, wandb_mode
from scdl.utils.hardware import configure_cpu_math

log = logging.getLogger(__name__)


def _check_multirun_ddp(cfg: DictConfig) -> None:
    """Lightning's ``ddp`` re-launches the script with the same argv: inside a local Hydra multirun
    every child would run the whole sweep again (Lightning #11300, hydra #2070)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not under Hydra
        return
    strategy = str(cfg.trainer.get("strategy", "auto"))
    devices = cfg.trainer.get("devices", 1)
    many = devices not in (1, "1", [0]) and devices is not None
    if multirun and many and strategy in ("ddp", "auto") and "SLURM_NTASKS" not in os.environ:
        raise RuntimeError(
            "DDP (strategy=ddp) inside a local Hydra multirun re-runs the sweep in every rank. Use "
            "trainer=ddp_spawn (or trainer.strategy=ddp_fork), one GPU per job with the joblib "
            "launcher, or the SLURM launcher (hydra/launcher=slurm), which starts ranks itself."
        )


def build_loggers(cfg: DictConfig, plan: ResumePlan | None = None) -> list:
    """Loggers of ``cfg.logger``; W&B runs offline without an API key (``wandb sync`` later).

    W&B gets the run folder's id (one W&B run however often the run is resumed); the CSV log is
    continued from the resumed step (see :class:`scdl.loggers.ResumableCSVLogger`)."""
    plan = plan or ResumePlan()
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if "_target_" not in lcfg:
            continue
        extra = {}
        if "WandbLogger" in lcfg._target_:
            mode = wandb_mode()
            if mode == "disabled":
                continue
            with open_dict(lcfg):
                lcfg.offline = mode == "offline"
            Path(lcfg.save_dir).mkdir(parents=True, exist_ok=True)
            extra = {"id": wandb_run_id(cfg.paths.output_dir), "resume": "allow"}
        if lcfg._target_.endswith("ResumableCSVLogger"):
            extra = {"resume_step": plan.step if plan.same_run else None}
        loggers.append(instantiate(lcfg, **extra))
        log.info("logger %s: %s", name, type(loggers[-1]).__name__)
    return loggers


def train(cfg: DictConfig) -> dict:
    """Fits and tests one experiment. Returns the final metrics (floats) plus ``best_ckpt``."""
    from scdl.utils.config_checks import validate_config

    validate_config(cfg)  # bad keys fail here, naming the key and the fix
    _check_multirun_ddp(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    torch.set_float32_matmul_precision("high")
    _log_precision(cfg)
    output_dir = Path(cfg.paths.output_dir)
    plan = plan_resume(cfg, output_dir)

    datamodule = setup_data(cfg)
    module = build_module(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_split_file(datamodule.split, output_dir / "split.json")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    module.run_config = {**resolved, "split": datamodule.split.to_dict()}
    if plan.same_run:
        set_aside_orphans(output_dir / "checkpoints", plan.ckpt_path)

    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = build_loggers(cfg, plan)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(resolved)

    metrics: dict = {}
    try:
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=plan.ckpt_path, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if cfg.get("test", True):
            ckpt = _best_checkpoint(trainer, cfg)
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            metrics["best_ckpt"] = (
                ckpt  # the module wrote test_metrics.{json,csv} and printed the table
            )
    finally:
        _finish_wandb(loggers)
    return metrics


def _log_precision(cfg: DictConfig) -> None:
    """Flushes denormals on CPU and logs the precision in use, and why, at start-up."""
    tcfg = cfg.trainer
    if tcfg.get("accelerator") != "cpu":
        return
    from scdl.utils.hardware import cpu_precision_choice

    configure_cpu_math()
    auto = cpu_precision_choice()
    precision, channels_last = str(tcfg.get("precision")), bool(cfg.get("channels_last"))
    chosen = (precision, channels_last) == (auto.precision, auto.channels_last)
    log.info(
        "CPU precision %s, channels_last=%s, denormals flushed (%s)",
        precision,
        channels_last,
        f"chosen for this CPU: {auto.reason}"
        if chosen
        else f"set by the config; this CPU would get {auto.precision}: {auto.reason}",
    )


def _best_checkpoint(trainer: L.Trainer, cfg: DictConfig) -> str | None:
    """Best checkpoint of this fit, else ``ckpt_path`` of the config, else current weights."""
    cb = trainer.checkpoint_callback
    if cb is not None and getattr(cb, "best_model_path", ""):
        return cb.best_model_path
    return cfg.get("ckpt_path")


def _finish_wandb(loggers: list) -> None:
    # One W&B run per Hydra multirun job: close it even when the job fails.
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
