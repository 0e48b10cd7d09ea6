"""Check a raw data set before preparing or training on it: ``python src/check_data.py data=amos
data.root=/data/amos`` (any data config). Reports unreadable or truncated files, image / label
geometry mismatches, label values outside the class map, NaN / Inf intensities, empty labels in
the labeled split, implausible spacing, duplicate cases, split ids without files and malformed
``dataset.json``, each with its file and fix, then a summary table. Exits with status 1 on errors.
The checks live in :mod:`scdl.data.checks`."""

from scdl.commands.check_data import command

if __name__ == "__main__":
    command()
