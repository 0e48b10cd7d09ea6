"""Check a raw data set before preparing or training on it: ``python src/check_data.py data=amos
data.root=/data/amos`` (any data config). Reports unreadable or truncated files, image / label
geometry mismatches, label values outside the class map, NaN / Inf intensities, empty labels in
the labeled split, implausible spacing, duplicate cases, split ids without files and malformed
``dataset.json``, each with its file and fix, then a summary table. Exits with status 1 on errors.
The checks live in :mod:`scdl.data.checks`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from scdl.command_line import exit_on_bad_command_line
from scdl.utils.config import register_resolvers
from scdl.utils.errors import config_folders, user_errors

register_resolvers()


def run(cfg: DictConfig) -> int:
    """Runs the checks of ``cfg.data``, prints the report; returns the exit status."""
    from scdl.data.catalog import check_from_config

    report = check_from_config(cfg.data, progress=bool(cfg.get("progress", True)))
    report.print()
    return 1 if report.errors else 0


@hydra.main(version_base="1.3", config_path="pkg://scdl.conf", config_name="check_data")
@user_errors(config_folders)  # permission / read-only / disk full: the message only
def main(cfg: DictConfig) -> None:
    status = run(cfg)
    if status:
        sys.exit(status)


def command() -> None:
    """The ``scdl-check-data`` console command (and ``python src/check_data.py``)."""
    # Hydra fails on unquoted paths and missing launcher / sweeper plugins before main(): say how
    exit_on_bad_command_line()
    main()
