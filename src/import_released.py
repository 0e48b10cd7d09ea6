"""Import the authors' released weights: ``python src/import_released.py
experiment=synapse_magicnet_scdl data.root=... released=<.pth> output=<file.ckpt>``, then
``python src/eval.py ckpt_path=<file.ckpt>``. See :mod:`scdl.inference.released`."""

from scdl.commands.import_released import command

if __name__ == "__main__":
    command()
