"""Train (and test) one experiment: ``python src/train.py experiment=phantom_mt``."""

from __future__ import annotations

import hydra
from dotenv import load_dotenv
from omegaconf import DictConfig

from scdl.command_line import exit_on_bad_command_line
from scdl.utils.config import project_root, register_resolvers
from scdl.utils.errors import config_folders, user_errors

load_dotenv(project_root() / ".env")  # secrets (WANDB_API_KEY, ...) never live in configs
register_resolvers()


@hydra.main(version_base="1.3", config_path="pkg://scdl.conf", config_name="train")
@user_errors(config_folders)  # permission / read-only / disk full: the message only
def main(cfg: DictConfig) -> float | None:
    from scdl.training import train

    metrics = train(cfg)
    # the value an Optuna sweep maximises
    return metrics.get(cfg.get("optimized_metric", "val/dice"))


def command() -> None:
    """The ``scdl-train`` console command (and ``python src/train.py``)."""
    # Hydra fails on unquoted paths and missing launcher / sweeper plugins before main(): say how
    exit_on_bad_command_line()
    main()
