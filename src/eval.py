"""Evaluate a checkpoint: ``python src/eval.py ckpt_path=<run>/checkpoints/best-....ckpt
[protocol=paper|standard] [split=test|val] [save_predictions=true] [inference.overlap=0.75]``.

Writes ``<run>/eval/<split>_<protocol>/metrics.{json,csv}`` (see :mod:`scdl.evaluation.evaluate`)."""

from scdl.commands.eval import command

if __name__ == "__main__":
    command()
