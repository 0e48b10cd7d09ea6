"""Labels back onto a scan's own grid, and written as NIfTI.

The cache grid (reoriented, resampled, possibly resized) maps onto the source file's voxels by the
affine stored in the case's cache metadata; every source voxel takes the label of the nearest
cache voxel (exact per-axis lookup; voxels up to one cache voxel outside are clamped, farther ones
refused), so anatomy that touches the scan's border keeps its border slices.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

GRID_EDGE_TOLERANCE = 1.0


def source_to_cache_index(meta: Mapping) -> np.ndarray:
    """The 4 x 4 map from source voxel indices to (fractional) preprocessed voxel indices:
    ``inv(affine) @ original_affine`` (both voxel -> world in the same world space)."""
    affine = np.asarray(meta["affine"], dtype=np.float64)
    return np.linalg.inv(affine) @ np.asarray(meta["original_affine"], dtype=np.float64)


def _nearest_index(coords: np.ndarray, size: int, what: str) -> np.ndarray:
    """Nearest preprocessed index of fractional ``coords`` (ties up, as scipy's order 0), clamped
    to ``0..size-1`` within :data:`GRID_EDGE_TOLERANCE`; farther is an inconsistent meta."""
    lo, hi = float(coords.min()), float(coords.max())
    if lo < -GRID_EDGE_TOLERANCE or hi > size - 1 + GRID_EDGE_TOLERANCE:
        raise ValueError(
            f"{what}: source voxels map to preprocessed indices {lo:.2f}..{hi:.2f}, outside the "
            f"preprocessed grid 0..{size - 1}: the meta (affine / original_affine / shape) does not "
            "belong to these labels (a cache of another protocol?)"
        )
    return np.clip(np.floor(coords + 0.5), 0, size - 1).astype(np.intp)


def labels_to_original_grid(labels: np.ndarray, meta: Mapping) -> np.ndarray:
    """Resamples a label map from the preprocessed grid back to the grid of the source image.

    Args:
        labels: (X, Y, Z) integer map on the grid of ``meta["affine"]`` (cache / preprocessed).
        meta: preprocessing meta (:func:`scdl.data.prepare.preprocess_case`) with ``affine``,
            ``original_affine`` (voxel -> world of the source file) and ``original_shape``.

    Returns the map (``original_shape``, same dtype) by nearest-neighbour lookup: every source voxel
    takes the label of the preprocessed voxel nearest to its world position. Both affines live in
    the same world space, so this inverts reorientation, resampling and resizing alike without
    replaying the transform chain. Source voxels at the border of the scan, which resampling or a
    flip can put a fraction of a voxel outside the preprocessed grid, take the label of the edge
    voxel (never background): a constant map returns constant. When the two grids share their
    axes (reorientation, spacing and resize keep them: a permutation with flips and scales), the
    lookup is done per axis, exactly; otherwise by a clamped order-0 affine resampling.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(meta.get("shape", labels.shape)):
        raise ValueError(f"labels {labels.shape} do not match the meta shape {meta['shape']}")
    shape = tuple(int(s) for s in meta["original_shape"])
    m = source_to_cache_index(meta)
    linear, offset = m[:3, :3], m[:3, 3]
    what = f"case {meta.get('case_id', '?')}"
    # cache axis fed by each source axis, when each row and column has one non-zero entry
    big = np.abs(linear) > 1e-9 * np.abs(linear).max()
    if (big.sum(0) == 1).all() and (big.sum(1) == 1).all():
        axis_of = big.argmax(0)  # source axis i -> cache axis axis_of[i]
        index: list = [None] * 3
        for i, n in enumerate(shape):
            j = int(axis_of[i])
            coords = linear[j, i] * np.arange(n, dtype=np.float64) + offset[j]
            index[j] = _nearest_index(coords, labels.shape[j], what)
        out = labels[np.ix_(*index)]  # axes in cache order: cache axis axis_of[i] is source axis i
        return np.ascontiguousarray(np.transpose(out, axis_of))
    return _labels_by_affine(labels, m, shape, what)


def _labels_by_affine(labels: np.ndarray, m: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    """Order-0 resampling for grids that do not share their axes (an oblique cache grid)."""
    from scipy.ndimage import affine_transform

    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
    reached = m[:3, :3] @ corners + m[:3, 3:4]
    for j in range(3):
        _nearest_index(reached[j], labels.shape[j], what)  # raises when far outside
    out = affine_transform(
        labels.astype(np.int32), m, output_shape=shape, order=0, mode="nearest", prefilter=False
    )
    return out.astype(labels.dtype)


def save_label_nifti(
    labels: np.ndarray,
    path: str | Path,
    affine: np.ndarray,
    reference: nib.Nifti1Image | None = None,
) -> Path:
    """Writes a label map (X, Y, Z) as NIfTI with ``affine``; with a ``reference`` image its header
    (qform/sform codes, units) is kept and only the data type changes (no intensity scaling)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(labels)
    if reference is not None:
        header = reference.header.copy()
        header.set_data_dtype(data.dtype)
        img = nib.Nifti1Image(data, np.asarray(affine), header=header)
    else:
        img = nib.Nifti1Image(data, np.asarray(affine))
        img.header.set_data_dtype(data.dtype)
        img.set_qform(np.asarray(affine), code=1)
        img.set_sform(np.asarray(affine), code=1)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, path)
    return path
