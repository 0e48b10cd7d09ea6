"""Segment new scans: ``python src/predict.py ckpt_path=<run>/checkpoints/best-....ckpt
input=<file.nii.gz or folder> output=<folder>``.

Label maps (uint8) are written with the shape and affine of each input (see
:mod:`scdl.inference.predict`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from scdl.command_line import exit_on_bad_command_line
from scdl.utils.config import register_resolvers
from scdl.utils.errors import config_folders, user_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="pkg://scdl.conf", config_name="predict")
@user_errors(config_folders)  # permission / read-only / disk full: the message only
def main(cfg: DictConfig) -> None:
    from scdl.inference.predict import predict

    written = predict(cfg)
    print(f"wrote {len(written)} label map(s) to {cfg.output}")


def command() -> None:
    """The ``scdl-predict`` console command (and ``python src/predict.py``)."""
    # Hydra fails on unquoted paths and missing launcher / sweeper plugins before main(): say how
    exit_on_bad_command_line()
    main()
