"""Score predicted NIfTI label maps against references, no model (like nnU-Net's evaluate_folder):
``python src/eval_folder.py pred_dir=<folder> ref_dir=<folder> [dataset_json=<dataset.json> |
class_names=[background,liver,...]] [protocol=standard|paper]``.

Writes ``<output_dir>/metrics.{json,csv}`` + ``metrics_per_case.csv`` (default
``<pred_dir>/eval_<protocol>``; see :mod:`scdl.evaluation.folder`)."""

from scdl.commands.eval_folder import command

if __name__ == "__main__":
    command()
