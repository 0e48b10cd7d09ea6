"""Segment new scans: ``python src/predict.py ckpt_path=<run>/checkpoints/best-....ckpt
input=<file.nii.gz or folder> output=<folder>``.

Label maps (uint8) are written with the shape and affine of each input (see
:mod:`scdl.inference.predict`)."""

from scdl.commands.predict import command

if __name__ == "__main__":
    command()
