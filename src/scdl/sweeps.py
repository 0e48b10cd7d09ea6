"""Hydra callbacks of the predefined sweeps (``conf/sweep/``): they run in the process that
launched the multirun, before the first and after the last job, whatever the launcher (basic,
joblib, SLURM) or sweeper (grid, Optuna).

- :class:`SweepCheck` composes and checks every job's config before the first job trains (a
  config error at job 7 of 24 would otherwise cost the hours of jobs 1-6 first).
- :class:`SweepFolder` creates the sweep folder first (Optuna's SQLite study lives there).
- :class:`PaperTable` writes the paper-style table of the sweep's runs when the last job is done,
  and of the finished ones when a job fails.
- :class:`OptunaResults` plots and tabulates an Optuna study's trials.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _sweep_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir))


def _wandb_group(config: DictConfig) -> str | None:
    """The sweep's W&B group when the jobs log to W&B (else None: no summary run)."""
    loggers = config.get("logger") or {}
    uses_wandb = any("Wandb" in str(lc.get("_target_", "")) for lc in loggers.values())
    return str(config.get("sweep_name")) if uses_wandb else None


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The override list of every job of a grid sweep (Hydra's basic sweeper), in launch order:
    the sweeper's ``params`` and the command line's comma lists expanded as the sweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    arguments = [str(a) for a in config.hydra.overrides.task]
    parsed = OverridesParser.create().parse_overrides(params + arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


class SweepCheck(Callback):
    """Before the first job of a grid sweep: composes every job's config and runs the config
    checks (:func:`scdl.config_checks.validate_config`) on it; one
    :class:`~scdl.config_checks.ConfigError` lists every failing job with its overrides,
    and nothing trains (the process exits with status 1). Other sweepers (Optuna) draw their jobs as they go: skipped."""

    def __init__(self, config_name: str = "train") -> None:
        self.config_name = config_name

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from scdl.config_checks import ConfigError, validate_config
        from scdl.utils.config import compose_config

        if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return
        jobs = job_overrides(config)
        failed = []
        for num, overrides in enumerate(jobs):
            try:
                validate_config(compose_config(self.config_name, overrides))
            except Exception as err:  # noqa: BLE001 - every job's error is reported together
                lines = str(err).splitlines()
                detail = "; ".join(line.strip(" -") for line in lines[1:]) or lines[0]
                failed.append(f"  job #{num} ({' '.join(overrides)}): {detail}")
        if failed:
            # Hydra turns a callback's exception into a warning and goes on: exit instead
            message = (
                f"{len(failed)} of {len(jobs)} sweep jobs have config errors; nothing was "
                "started:\n" + "\n".join(failed)
            )
            log.error("%s", message)
            raise SystemExit(f"{ConfigError.__name__}: {message}")
        log.info("sweep: the configs of all %d jobs compose and pass the checks", len(jobs))


class SweepFolder(Callback):
    """Creates ``hydra.sweep.dir`` before the sweeper starts (the launcher would only create it
    when the first job starts, after Optuna has opened its storage there)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _sweep_dir(config).mkdir(parents=True, exist_ok=True)


class PaperTable(Callback):
    """``paper_table.{md,csv,png}`` in the sweep folder (+ a W&B summary run) after the last job.

    Rebuild it at any time with ``python -m scdl.reporting.paper_table <sweep folder>``."""

    def __init__(self, smallest: int = 4) -> None:
        self.smallest = smallest

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write(config, _wandb_group(config))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """A failed job makes Hydra stop before ``on_multirun_end``: the table of the jobs that
        finished is written now (rewritten by every later failure, and at the end if it comes)."""
        from hydra.core.utils import JobStatus

        if getattr(job_return, "status", None) != JobStatus.FAILED:
            return
        log.error(
            "a sweep job failed (%s): writing the paper table of the finished jobs",
            getattr(job_return, "_return_value", "?"),  # .return_value re-raises the error
        )
        self._write(config, None)

    def _write(self, config: DictConfig, wandb_group: str | None) -> None:
        from scdl.reporting.paper_table import write_paper_table

        sweep = _sweep_dir(config)
        try:
            files = write_paper_table([sweep], sweep, self.smallest, wandb_group)
        except ValueError as err:
            log.error("paper table not written (%s)", err)
            return
        log.info(
            "paper table: %s (rebuild: python -m scdl.reporting.paper_table %s)",
            ", ".join(str(p) for p in files.values()),
            sweep,
        )


class OptunaResults(Callback):
    """After an Optuna sweep: ``optuna_trials.csv`` (every trial of the study, resumed ones
    included) and ``optuna_results.png`` (objective per trial with the best so far, and the
    objective against each searched parameter)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        if not sweeper.get("storage"):
            log.warning("Optuna sweep without storage: no results plot")
            return
        import optuna

        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        write_optuna_results(study, _sweep_dir(config))


def write_optuna_results(study: Any, out_dir: Path) -> dict[str, Path]:
    """The finished trials of an ``optuna.Study`` in ``out_dir``, with Optuna's own tools:
    ``optuna_trials.csv`` (``study.trials_dataframe``: number, objective, parameters, state),
    ``optuna_results.png`` (its optimisation history: objective per trial and best so far) and
    ``optuna_slice.png`` (its slice plot: the objective against each searched parameter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization.matplotlib import plot_optimization_history, plot_slice

    paths = {
        "csv": out_dir / "optuna_trials.csv",
        "png": out_dir / "optuna_results.png",
        "slice_png": out_dir / "optuna_slice.png",
    }
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state"))
    frame[frame["state"] == "COMPLETE"].to_csv(paths["csv"], index=False)
    for key, plot in (("png", plot_optimization_history), ("slice_png", plot_slice)):
        axes = np.atleast_1d(plot(study))
        axes[0].figure.savefig(paths[key], dpi=100, bbox_inches="tight")
        plt.close(axes[0].figure)
    return paths
