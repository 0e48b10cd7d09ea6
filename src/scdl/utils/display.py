"""Array helpers for pictures, shared by the training callbacks (W&B overlays, the proxy figure)
and reporting (notebook figures, the dashboard): display orientation, 8-bit scaling, per-slice
class counts, a 2-D projection of embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def to_display(plane: np.ndarray) -> np.ndarray:
    """An axial (X, Y) plane of a RAS volume -> (rows, cols) in radiological view: anterior up,
    the patient's right on the left."""
    return np.ascontiguousarray(np.asarray(plane).T[::-1, ::-1])


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Intensities -> 0..255 between the 0.5 and 99.5 percentiles (any normalisation)."""
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image, dtype=np.float64)
    return (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8)


def slice_class_counts(label: np.ndarray, num_classes: int, axis: int = -1) -> np.ndarray:
    """(S, C) voxel counts of every class in every slice of ``label`` along ``axis``."""
    label = np.asarray(label)
    moved = np.moveaxis(label, axis, 0).reshape(label.shape[axis], -1).astype(np.int64)
    slices = np.arange(moved.shape[0])[:, None]
    flat = (slices * num_classes + np.clip(moved, 0, num_classes - 1)).ravel()
    return np.bincount(flat, minlength=moved.shape[0] * num_classes).reshape(-1, num_classes)


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """(N, z) -> (N, 2) projection on the first two principal components."""
    import torch

    centred = points - points.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T
