"""Prepare a data set once: ``python src/prepare_data.py data=phantom`` (or ``data=amos
data.raw_dir=...``). Reads the raw layout, preprocesses every case with the data config's protocol
and writes the cache that training reads. Idempotent; safe to interrupt and re-run."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from scdl.command_line import exit_on_bad_command_line
from scdl.utils.config import register_resolvers
from scdl.utils.errors import config_folders, user_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="pkg://scdl.conf", config_name="prepare_data")
@user_errors(config_folders)  # permission / read-only / disk full: the message only
def main(cfg: DictConfig) -> None:
    from scdl.data.catalog import prepare_from_config

    cache = prepare_from_config(cfg.data)
    print(f"prepared {cfg.data.name}: cache at {cache}")


def command() -> None:
    """The ``scdl-prepare-data`` console command (and ``python src/prepare_data.py``)."""
    # Hydra fails on unquoted paths and missing launcher / sweeper plugins before main(): say how
    exit_on_bad_command_line()
    main()
