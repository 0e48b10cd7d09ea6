"""The preprocessed cache, read: its ``index.json`` and one case's arrays and metadata.

A leaf: training, evaluation, inference and reporting read the cache through here without the
preparation code (:mod:`scdl.data.prepare` writes it)::

    <cache>/index.json               class names, protocol, one entry per case
    <cache>/<case>_image.npy         float32 (X, Y, Z) on the cache grid
    <cache>/<case>_label.npy         uint8 / uint16 (X, Y, Z), absent for unlabeled cases
    <cache>/<case>.json              metadata: spacing, affines, source files
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class CachedCase:
    """A preprocessed case: arrays are memory-mapped (``np.load(mmap_mode='r')``) until copied."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    meta: dict


def read_index(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no preprocessed cache at {cache_dir} (index.json missing): run the preparation step "
            "first (`make data` for the phantom, `python src/prepare_data.py data=...` otherwise)"
        )
    return json.loads(path.read_text())


def load_cached_case(cache_dir: str | Path, case_id: str, in_memory: bool = True) -> CachedCase:
    """Loads one case of the cache; ``in_memory=False`` keeps the arrays memory-mapped."""
    cache = Path(cache_dir)
    meta_path = cache / f"{case_id}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"case {case_id!r} is not in the cache {cache}")
    meta = json.loads(meta_path.read_text())
    mode: Literal["r"] | None = None if in_memory else "r"
    image = np.load(cache / f"{case_id}_image.npy", mmap_mode=mode)
    label_path = cache / f"{case_id}_label.npy"
    label = np.load(label_path, mmap_mode=mode) if label_path.is_file() else None
    return CachedCase(case_id, image, label, meta)
