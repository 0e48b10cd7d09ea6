"""Export a trained checkpoint as a MONAI bundle: ``python src/export.py
ckpt_path=<run>/checkpoints/best-....ckpt output=<folder>`` (see :mod:`scdl.inference.bundle`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from scdl.command_line import exit_on_bad_command_line
from scdl.utils.config import register_resolvers
from scdl.utils.errors import config_folders, user_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="pkg://scdl.conf", config_name="export")
@user_errors(config_folders)  # permission / read-only / disk full: the message only
def main(cfg: DictConfig) -> None:
    from scdl.inference.bundle import export_bundle

    print(f"wrote the MONAI bundle {export_bundle(cfg)}")


def command() -> None:
    """The ``scdl-export`` console command (and ``python src/export.py``)."""
    # Hydra fails on unquoted paths and missing launcher / sweeper plugins before main(): say how
    exit_on_bad_command_line()
    main()
