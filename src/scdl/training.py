"""``train(cfg)``: compose data, model, losses and framework from the Hydra config, fit, then test the
best checkpoint. ``src/train.py`` is a thin Hydra wrapper around it; tests call it directly."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from scdl.build import build_module, setup_data
from scdl.data.class_stats import smallest_classes
from scdl.data.splits import save_split_file
from scdl.loggers import wandb_run_id
from scdl.resume import ResumePlan, plan_resume, set_aside_orphans
from scdl.runs import CHECKPOINTS, SPLIT_FILE, mark_finished, metric_series
from scdl.utils.config import in_multirun, instantiate_dict, wandb_mode
from scdl.utils.distributed import launch_is_global_zero
from scdl.utils.errors import InputError
from scdl.utils.hardware import configure_cpu_math

log = logging.getLogger(__name__)


def _check_multirun_ddp(cfg: DictConfig) -> None:
    """Lightning's ``ddp`` re-launches the script with the same argv: inside a local Hydra multirun
    every child would run the whole sweep again (Lightning #11300, hydra #2070)."""
    multirun = in_multirun()
    strategy = str(cfg.trainer.get("strategy", "auto"))
    devices = cfg.trainer.get("devices", 1)
    many = devices not in (1, "1", [0]) and devices is not None
    if multirun and many and strategy in ("ddp", "auto") and "SLURM_NTASKS" not in os.environ:
        raise InputError(
            "DDP (strategy=ddp) inside a local Hydra multirun re-runs the sweep in every rank. Use "
            "trainer.strategy=ddp_spawn, one GPU per job (launcher=joblib), or the SLURM launcher "
            "(launcher=slurm), which starts the ranks itself."
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
        extra: dict[str, Any] = {}
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
    from scdl.config_checks import validate_config
    from scdl.utils.quiet import quiet_logs

    quiet_logs()  # each log line once, no third-party tips (scdl.utils.quiet)
    validate_config(cfg)  # bad keys fail here, naming the key and the fix
    _check_multirun_ddp(cfg)
    output_dir = Path(cfg.paths.output_dir)
    plan = plan_resume(cfg, output_dir)
    if plan.finished is not None:  # resume=true on a finished run (a rerun sweep): nothing to do
        return dict(plan.finished.get("metrics") or {})
    pin_job_gpu(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    torch.set_float32_matmul_precision("high")
    _log_precision(cfg)

    datamodule = setup_data(cfg)
    module = build_module(cfg)
    if cfg.get("minority_k"):  # val/dice_minority: what a sweep can optimise for small organs
        module.minority_classes = smallest_classes(
            Path(cfg.data.cache_dir), datamodule.split.labeled, module.num_classes, cfg.minority_k
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    zero = launch_is_global_zero()  # run-folder writes: one rank (all SLURM ranks start together)
    if zero:
        save_split_file(datamodule.split, output_dir / SPLIT_FILE)
        from scdl.utils.provenance import record_start

        record_start(output_dir, cfg.trainer.get("precision"))  # commit + machine of the figures
    resolved = cast(dict, OmegaConf.to_container(cfg, resolve=True))
    module.run_config = {**resolved, "split": datamodule.split.to_dict()}
    if plan.same_run and zero:
        set_aside_orphans(output_dir / CHECKPOINTS, cast(str, plan.ckpt_path))  # same_run: set

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
            metrics.update(best_validation(output_dir, trainer))
        if cfg.get("test", True):
            ckpt = _best_checkpoint(trainer, cfg)
            # verbose=False: the module prints the per-class table; Lightning's would repeat it
            trainer.test(
                module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True, verbose=False
            )
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            metrics["best_ckpt"] = (
                ckpt  # the module wrote test_metrics.{json,csv} and printed the table
            )
    finally:
        _finish_wandb(loggers)
    if trainer.is_global_zero:
        for protocol in cfg.get("post_eval") or []:
            summary = post_evaluate(metrics.get("best_ckpt"), str(protocol), output_dir)
            if summary is not None:
                metrics[f"eval/test_{protocol}/dice"] = summary["overall"]["dice"]["mean"]
        if cfg.get("train", True):
            mark_finished(output_dir, metrics)
    return metrics


def best_validation(output_dir: Path, trainer: L.Trainer) -> dict[str, float]:
    """``best/val/<metric>``: the best value of every validation metric over the whole run, resumed
    parts included (from the CSV log), and ``best/step`` of the best ``val/dice``: what a sweep
    optimises (the last validation may not be the best)."""
    import math

    import numpy as np

    best: dict[str, float] = {}
    for key, (steps, values) in metric_series(output_dir).items():
        finite = np.flatnonzero(np.isfinite(values))
        if not key.startswith("val/") or not len(finite):
            continue
        i = finite[np.argmax(values[finite])]  # the first step that reached the best value
        best[f"best/{key}"] = float(values[i])
        if key == "val/dice":
            best["best/step"] = float(steps[i])
    cb = trainer.checkpoint_callback
    score = getattr(cb, "best_model_score", None)
    if "best/val/dice" not in best and score is not None and math.isfinite(float(score)):
        best["best/val/dice"] = float(score)  # no CSV log: the best checkpoint's score
    return best


def post_evaluate(ckpt: str | None, protocol: str, output_dir: Path) -> dict | None:
    """``src/eval.py ckpt_path=<best> protocol=<protocol>`` in this process (no W&B run of its
    own): results in ``<run>/eval/test_<protocol>/`` where the paper table reads them."""
    if not ckpt:
        log.warning("post_eval=%s: no best checkpoint in %s, skipped", protocol, output_dir)
        return None
    from scdl.evaluation.evaluate import evaluate
    from scdl.utils.config import compose_config

    cfg = compose_config("eval", [f"ckpt_path={ckpt}", f"protocol={protocol}", "logger=csv"])
    return evaluate(cfg)


def pin_job_gpu(cfg: DictConfig) -> None:
    """``launcher=joblib`` sets ``job_gpus``: each sweep job runs on one GPU of its own, chosen from
    the job number (:func:`scdl.utils.hardware.claim_job_gpu`), via ``CUDA_VISIBLE_DEVICES`` set
    before CUDA starts."""
    from scdl.utils.hardware import claim_job_gpu, sweep_gpus

    if cfg.get("job_gpus") in (None, False) or not in_multirun():
        return
    from hydra.core.hydra_config import HydraConfig

    hcfg = HydraConfig.get()
    gpus = sweep_gpus(cfg.job_gpus)
    if not gpus:
        log.warning("job_gpus=%s: no GPU found, job runs without pinning", cfg.job_gpus)
        return
    gpu = claim_job_gpu(int(hcfg.job.num), gpus, Path(hcfg.sweep.dir) / ".gpu_locks")
    if gpu is None:
        raise InputError(
            f"job {hcfg.job.num}: all {len(gpus)} GPUs ({','.join(gpus)}) are held by other "
            "jobs: set hydra.launcher.n_jobs to at most the number of GPUs"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    log.info("sweep job %s runs on GPU %s (CUDA_VISIBLE_DEVICES=%s)", hcfg.job.num, gpu, gpu)


def _log_precision(cfg: DictConfig) -> None:
    """Flushes denormals on CPU and logs the precision in use, and why, at start-up."""
    tcfg = cfg.trainer
    if tcfg.get("accelerator") in ("gpu", "cuda"):
        from scdl.utils.hardware import gpu_precision_choice

        auto, precision = gpu_precision_choice(), str(tcfg.get("precision"))
        why = _precision_source(precision == auto.precision, auto, "these GPUs")
        log.info("GPU precision %s (%s)", precision, why)
        return
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
        _precision_source(chosen, auto, "this CPU"),
    )


def _precision_source(chosen: bool, auto, hardware: str) -> str:
    """Why a run uses its precision: chosen for ``hardware``, or set by the config."""
    if chosen:
        return f"chosen for {hardware}: {auto.reason}"
    return f"set by the config; {hardware} would get {auto.precision}: {auto.reason}"


def _best_checkpoint(trainer: L.Trainer, cfg: DictConfig) -> str | None:
    """Best checkpoint of this fit, else ``ckpt_path`` of the config, else current weights."""
    cb: Any = trainer.checkpoint_callback  # a ModelCheckpoint, or another Checkpoint
    if cb is not None and bool(getattr(cb, "best_model_path", "")):
        return cb.best_model_path
    return cfg.get("ckpt_path")


def _finish_wandb(loggers: list) -> None:
    # One W&B run per Hydra multirun job: close it even when the job fails.
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
