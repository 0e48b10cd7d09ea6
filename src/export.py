"""Export a trained checkpoint as a MONAI bundle: ``python src/export.py
ckpt_path=<run>/checkpoints/best-....ckpt output=<folder>`` (see :mod:`scdl.inference.bundle`)."""

from scdl.commands.export import command

if __name__ == "__main__":
    command()
