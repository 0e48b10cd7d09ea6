"""Segment new scans: ``python src/predict.py ckpt_path=<run>/checkpoints/best-....ckpt
input=<file.nii.gz or folder> output=<folder>``.

Label maps (uint8) are written with the shape and affine of each input (see
:mod:`scdl.evaluation.predict`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from scdl.utils.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from scdl.evaluation.predict import predict

    written = predict(cfg)
    print(f"wrote {len(written)} label map(s) to {cfg.output}")


if __name__ == "__main__":
    main()
