"""Import the authors' released weights: ``python src/import_released.py
experiment=synapse_magicnet_scdl data.root=... released=<.pth> output=<file.ckpt>``, then
``python src/eval.py ckpt_path=<file.ckpt>``. See :mod:`scdl.inference.released`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from scdl.command_line import exit_on_bad_command_line
from scdl.utils.config import register_resolvers
from scdl.utils.errors import config_folders, user_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="pkg://scdl.conf", config_name="import_released")
@user_errors(config_folders)  # permission / read-only / disk full: the message only
def main(cfg: DictConfig) -> None:
    from scdl.inference.released import import_released

    print(f"wrote {import_released(cfg)}")


def command() -> None:
    """The ``scdl-import-released`` console command (and ``python src/import_released.py``)."""
    # Hydra fails on unquoted paths and missing launcher / sweeper plugins before main(): say how
    exit_on_bad_command_line()
    main()
