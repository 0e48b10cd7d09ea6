"""Evaluate a checkpoint: ``python src/eval.py ckpt_path=<run>/checkpoints/best-....ckpt
[protocol=paper|standard] [split=test|val] [save_predictions=true] [inference.overlap=0.75]``.

Writes ``<run>/eval/<split>_<protocol>/metrics.{json,csv}`` (see :mod:`scdl.evaluation.evaluate`)."""

from __future__ import annotations

import hydra
from dotenv import load_dotenv
from omegaconf import DictConfig

from scdl.command_line import exit_on_bad_command_line
from scdl.utils.config import project_root, register_resolvers
from scdl.utils.errors import config_folders, user_errors

load_dotenv(project_root() / ".env")  # WANDB_API_KEY, ...
register_resolvers()


@hydra.main(version_base="1.3", config_path="pkg://scdl.conf", config_name="eval")
@user_errors(config_folders)  # permission / read-only / disk full: the message only
def main(cfg: DictConfig) -> float | None:
    from scdl.evaluation.evaluate import evaluate
    from scdl.reporting.wandb_eval import log_evaluation

    summary = evaluate(cfg)
    log_evaluation(cfg, summary)
    return summary["overall"]["dice"]["mean"]


def command() -> None:
    """The ``scdl-eval`` console command (and ``python src/eval.py``)."""
    # Hydra fails on unquoted paths and missing launcher / sweeper plugins before main(): say how
    exit_on_bad_command_line()
    main()
