"""Class statistics of a split measured on the preprocessed cache: which classes are the minority.

The minority classes are the ``k`` foreground classes with the fewest voxels in the labeled
training cases (measured, not assumed); training logs their mean validation Dice
(``val/dice_minority``), the summary and paper tables mark them.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np


@cache  # runs of one sweep share their labeled cases: count them once
def class_voxel_counts(cache_dir: Path, case_ids: tuple[str, ...], num_classes: int) -> np.ndarray:
    """Voxels per class id (``num_classes``,) summed over the cached labels of ``case_ids``."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for cid in case_ids:
        label = np.load(Path(cache_dir) / f"{cid}_label.npy", mmap_mode="r")
        counts += np.bincount(np.asarray(label).ravel(), minlength=num_classes)[:num_classes]
    return counts


def smallest_classes(cache_dir: Path, case_ids: list[str], num_classes: int, k: int) -> list[int]:
    """Ids of the ``k`` foreground classes with the fewest voxels over ``case_ids``."""
    counts = class_voxel_counts(Path(cache_dir), tuple(case_ids), num_classes)
    return [int(c) for c in np.argsort(counts[1:], kind="stable")[:k] + 1]
