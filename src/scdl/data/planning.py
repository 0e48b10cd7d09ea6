"""Planning: the data-set statistics a preprocessing protocol may leave to the data (the
nnU-Net-like "fingerprint"): the CT foreground intensity percentiles, mean and std, and the
median target spacing. Read from the raw cases; :mod:`scdl.data.catalog` resolves them before the
protocol is built, :mod:`scdl.data.prepare` then writes the cache with them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np

from scdl.data.checks import squeeze_to_3d
from scdl.data.layouts import RawCase, RawDataset, is_array_case, load_array_case
from scdl.utils.progress import progress_iter

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage


def _raw_arrays(case: RawCase) -> tuple[np.ndarray, np.ndarray | None]:
    if is_array_case(case):
        return load_array_case(case)
    import nibabel as nib

    image = squeeze_to_3d(np.asanyarray(cast("SpatialImage", nib.load(str(case.image))).dataobj))
    label = (
        squeeze_to_3d(np.asanyarray(cast("SpatialImage", nib.load(str(case.label))).dataobj))
        if case.label
        else None
    )
    if label is not None and label.shape != image.shape:
        raise ValueError(
            f"{case.case_id}: label {case.label} shape {label.shape} differs from image "
            f"{case.image} shape {image.shape}"
        )
    return image, label


def _evenly(items: Sequence, limit: int | None) -> list:
    if limit is None or len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def foreground_intensity_stats(
    raw: RawDataset,
    percentiles: tuple[float, float] = (0.5, 99.5),
    max_cases: int | None = 60,
    samples_per_case: int = 10000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[float, float, float, float]:
    """nnU-Net's CT statistics: ``(lo, hi, mean, std)`` of the foreground (label > 0) intensities
    of the labeled cases, ``lo``/``hi`` at ``percentiles``; read from the raw volumes (no
    resampling), ``samples_per_case`` random foreground voxels from at most ``max_cases`` evenly
    chosen cases. Deterministic in ``seed``."""
    cases = _evenly(raw.labeled, max_cases)
    if not cases:
        raise ValueError(f"{raw.name}: no labeled case to compute intensity statistics from")
    rng = np.random.default_rng(seed)
    samples = []
    for case in progress_iter(cases, f"intensity statistics {raw.name}", progress):
        image, label = _raw_arrays(case)
        fg = np.asarray(image)[np.asarray(label) > 0]
        if fg.size > samples_per_case:
            fg = fg[rng.choice(fg.size, samples_per_case, replace=False)]
        samples.append(fg.astype(np.float64))
    values = np.concatenate(samples)
    if values.size == 0:
        raise ValueError(f"{raw.name}: the labeled cases have no foreground voxel")
    lo, hi = np.percentile(values, percentiles)
    return float(lo), float(hi), float(values.mean()), float(values.std())


def median_spacing(
    raw: RawDataset, orientation: str | None = "RAS", anisotropy: float = 3.0
) -> tuple[float, float, float]:
    """Target spacing in the nnU-Net way: the per-axis median voxel size (mm) of the labeled cases,
    in the axis order after reorientation; when the result is anisotropic (coarsest axis more than
    ``anisotropy`` times the finest), the coarse axis takes the 10th percentile instead (finer
    slices than the median, as nnU-Net does). Reads NIfTI headers only."""
    import nibabel as nib

    if not raw.labeled:
        raise ValueError(f"{raw.name}: no labeled case to compute the spacing from")
    rows = []
    for case in raw.labeled:
        if is_array_case(case):
            raise ValueError(f"{case.image}: array cases have no spacing; set it explicitly")
        affine = cast("SpatialImage", nib.load(str(case.image))).affine
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
        if orientation:  # spacing along the output axes: axis i of the file goes to ornt[i, 0]
            out = np.empty(3)
            out[nib.io_orientation(affine)[:, 0].astype(int)] = zooms
            zooms = out
        rows.append(zooms)
    spacings = np.stack(rows)
    target = np.median(spacings, 0)
    coarse = int(np.argmax(target))
    if target[coarse] > anisotropy * target.min():
        target[coarse] = np.percentile(spacings[:, coarse], 10)
    return cast(tuple[float, float, float], tuple(round(float(s), 4) for s in target))
