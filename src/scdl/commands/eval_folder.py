"""Score predicted NIfTI label maps against references, no model (like nnU-Net's evaluate_folder):
``python src/eval_folder.py pred_dir=<folder> ref_dir=<folder> [dataset_json=<dataset.json> |
class_names=[background,liver,...]] [protocol=standard|paper]``.

Writes ``<output_dir>/metrics.{json,csv}`` + ``metrics_per_case.csv`` (default
``<pred_dir>/eval_<protocol>``; see :mod:`scdl.evaluation.folder`)."""

from __future__ import annotations

from typing import cast

import hydra
from omegaconf import DictConfig, OmegaConf

from scdl.command_line import exit_on_bad_command_line
from scdl.utils.config import register_resolvers
from scdl.utils.errors import config_folders, user_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="pkg://scdl.conf", config_name="eval_folder")
@user_errors(config_folders)  # permission / read-only / disk full: the message only
def main(cfg: DictConfig) -> float | None:
    from scdl.evaluation.folder import evaluate_folder_from_config

    summary = evaluate_folder_from_config(cast(dict, OmegaConf.to_container(cfg, resolve=True)))
    return summary["overall"]["dice"]["mean"]


def command() -> None:
    """The ``scdl-eval-folder`` console command (and ``python src/eval_folder.py``)."""
    # Hydra fails on unquoted paths and missing launcher / sweeper plugins before main(): say how
    exit_on_bad_command_line()
    main()
