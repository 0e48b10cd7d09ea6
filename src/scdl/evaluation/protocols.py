"""Per-case segmentation metrics (Dice, ASD, HD95, NSD) in the two evaluation protocols.

Dice comes from :mod:`scdl.metrics.dice` (the one Dice of the project); the surface distances of
both protocols come from MONAI (``monai.metrics.utils.get_edge_surface_distance``: edges = mask
minus its binary erosion with face connectivity, the volume border counting as outside; exact
Euclidean distances in the units of ``spacing``). Aggregation and files: :mod:`scdl.metrics.results`.
Protocols (``docs/method.md`` §5, §8 item 13):

``standard`` — native resolution, physical units (mm via ``spacing``); for a class present on both
    sides the values equal MONAI's metric classes (checked in ``tests/test_metrics.py``):

    * ASD = ``SurfaceDistanceMetric(symmetric=True)``: the mean of the pooled distances
      ``d(S_pred -> S_gt) U d(S_gt -> S_pred)`` (ASSD, as medpy >= 0.5 ``assd``);
    * HD95 = ``HausdorffDistanceMetric(percentile=95)``: the larger of the two directed 95th
      percentiles (linear interpolation);
    * NSD at tolerance tau mm = ``SurfaceDiceMetric(class_thresholds=[tau])`` (voxel-counting
      surface Dice: ``(#{d_pg <= tau} + #{d_gp <= tau}) / (|S_pred| + |S_gt|)``);
    * our rules where MONAI returns inf/NaN: both empty -> all metrics NaN (the class is excluded
      from that case's means); exactly one empty -> Dice 0, NSD 0, ASD = HD95 =
      ``empty_distance`` (default: the image diagonal in mm, the largest distance possible).

``paper`` — the GALoss/SCDL test protocol, for numbers comparable with the published tables. Own
    code (on MONAI's distances) because the protocol differs from MONAI's metrics: prediction and
    label are resized to ``target_shape`` (default (160, 160, 80)) with PyTorch's ``nearest``
    interpolation; distances are in voxels of that grid. Per foreground class:

    * both present: Dice; ASD = medpy ``asd(pred, gt)``, the *directed* mean distance
      ``d(S_pred -> S_gt)``; HD95 = medpy ``hd95``, the 95th percentile of the *pooled* distances
      (not MONAI's max of directed percentiles); NSD as above, tolerance in voxels;
    * exactly one empty: Dice 0, ASD 128, HD95 128, NSD 0 (the released code's penalty);
    * both empty: Dice 1, ASD 0, HD95 0, NSD 1;
    * if the whole resized prediction has no foreground voxel, **all** metrics of the case are 0
      (Dice 0 but also ASD 0 and HD95 0, i.e. lenient on distances) — the released code does this;
      ``empty_prediction_rule=False`` disables it.

    The released code reports HD95 and NSD as constant 0; the real values computed here are extra
    metrics and not comparable with published HD95/NSD columns.

Speed: distances are computed on the bounding box of both masks plus a one-voxel margin (exact,
since all surface voxels lie inside it); the boxes of all classes come from one
``scipy.ndimage.find_objects`` pass per label map.
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from scdl.metrics.dice import AbsentPolicy, per_class_dice
from scdl.utils.errors import InputError

METRICS: tuple[str, ...] = ("dice", "asd", "hd95", "nsd")
PAPER_SHAPE: tuple[int, int, int] = (160, 160, 80)
PAPER_PENALTY = 128.0

ArrayLike = np.ndarray | torch.Tensor
Protocol = Literal["paper", "standard"]
PROTOCOLS: tuple[str, ...] = typing.get_args(Protocol)


# ----------------------------------------------------------------------------------------------
# Inputs and the paper resize step
# ----------------------------------------------------------------------------------------------


def to_label_array(x: ArrayLike) -> np.ndarray:
    """An integer label map as a numpy array (torch tensors are detached and moved to CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == bool:
        return x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.integer):
        if not np.all(np.equal(np.mod(x, 1), 0)):
            raise ValueError("label maps must hold integer values")
        x = x.astype(np.int64)
    return x


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    # Index map of torch's legacy "nearest" mode, obtained from torch itself so that rounding of
    # the scale factor matches F.interpolate exactly.
    src = torch.arange(in_size, dtype=torch.float64).reshape(1, 1, in_size)
    idx = F.interpolate(src, size=out_size, mode="nearest")
    return idx.reshape(-1).long().numpy()


def resize_labels_nearest(labels: ArrayLike, shape: Sequence[int]) -> np.ndarray:
    """Resizes a label map to ``shape`` like ``F.interpolate(..., size=shape, mode="nearest")``.

    Shapes: ``labels`` (X, Y, Z) (any N-D) -> ``shape`` (same number of dims).
    """
    arr = to_label_array(labels)
    if len(shape) != arr.ndim:
        raise ValueError(f"target shape {tuple(shape)} does not match label dims {arr.shape}")
    if tuple(shape) == arr.shape:
        return arr
    index = np.ix_(*[_nearest_indices(n, m) for n, m in zip(arr.shape, shape, strict=True)])
    return arr[index]


# ----------------------------------------------------------------------------------------------
# Binary geometry
# ----------------------------------------------------------------------------------------------


def _normalize_spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,)).copy()
    if np.any(sp <= 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    return sp


def _union_box(
    boxes: Sequence[tuple[slice, ...] | None], shape: tuple[int, ...], margin: int
) -> tuple[slice, ...]:
    present = [b for b in boxes if b is not None]
    return tuple(
        slice(
            max(min(b[d].start for b in present) - margin, 0),
            min(max(b[d].stop for b in present) + margin, n),
        )
        for d, n in enumerate(shape)
    )


def _monai_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's directed edge distances ``(d(S_pred -> S_gt), d(S_gt -> S_pred))`` (float64) of two
    non-empty boolean masks."""
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal call
        warnings.filterwarnings("ignore", "monai.metrics.utils get_mask_edges", FutureWarning)
        _, distances, _ = get_edge_surface_distance(
            torch.from_numpy(np.ascontiguousarray(pred)),
            torch.from_numpy(np.ascontiguousarray(gt)),
            spacing=spacing.tolist(),
            symmetric=True,
            warn_empty=False,
        )
        d_pg, d_gp = cast("tuple[torch.Tensor, torch.Tensor]", distances)  # symmetric: both ways
    return d_pg.numpy().astype(np.float64), d_gp.numpy().astype(np.float64)


def surface_distances(
    pred: ArrayLike, gt: ArrayLike, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty binary masks (MONAI's edges/distances).

    Returns ``(d_pred_to_gt, d_gt_to_pred)``: for every surface voxel of ``pred`` the distance to the
    nearest surface voxel of ``gt`` (medpy's ``__surface_distances(pred, gt)``) and vice versa, in
    the units of ``spacing`` (voxels if None). Shapes: ``pred``, ``gt`` (X, Y, Z) bool/int.
    """
    p, g = to_label_array(pred).astype(bool), to_label_array(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {g.shape}")
    if not p.any() or not g.any():
        raise ValueError("surface distances need two non-empty masks")
    return _monai_distances(p, g, _normalize_spacing(spacing, p.ndim))


def _standard_distances(
    d_pg: np.ndarray, d_gp: np.ndarray, nsd_tolerance: float
) -> tuple[float, float, float]:
    """(asd, hd95, nsd) as MONAI's SurfaceDistanceMetric(symmetric=True),
    HausdorffDistanceMetric(percentile=95) and SurfaceDiceMetric compute them."""
    pooled = np.concatenate([d_pg, d_gp])
    hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    nsd = ((d_pg <= nsd_tolerance).sum() + (d_gp <= nsd_tolerance).sum()) / pooled.size
    return float(pooled.mean()), float(hd95), float(nsd)


def _paper_distances(
    d_pg: np.ndarray, d_gp: np.ndarray, nsd_tolerance: float
) -> tuple[float, float, float]:
    """(asd, hd95, nsd) the medpy way of the released GALoss/SCDL code: ASD directed pred -> GT,
    HD95 the 95th percentile of the pooled distances (own code: MONAI has neither)."""
    pooled = np.concatenate([d_pg, d_gp])
    tol = nsd_tolerance + 1e-6  # distances are float32 square roots; keep exact ties inside
    nsd = ((d_pg <= tol).sum() + (d_gp <= tol).sum()) / pooled.size
    return float(d_pg.mean()), float(np.percentile(pooled, 95)), float(nsd)


def _class_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: np.ndarray,
    nsd_tolerance: float,
    protocol: Protocol,
    one_empty: tuple[float, float, float],
    both_empty: tuple[float, float, float],
) -> dict[str, np.ndarray]:
    """Metrics per foreground class 1..C-1; ``one_empty`` / ``both_empty`` are ``(asd, hd95, nsd)``
    (Dice follows the protocol's absent rule of :func:`per_class_dice`)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and label {gt.shape} differ in shape")
    absent: AbsentPolicy = "one" if protocol == "paper" else "skip_both_empty"
    summarize = _paper_distances if protocol == "paper" else _standard_distances
    out = {m: np.empty(num_classes - 1) for m in METRICS}
    out["dice"] = per_class_dice(pred, gt, num_classes, absent).numpy()
    # One pass per map for all bounding boxes; labels outside [1, C) are ignored.
    boxes_p = ndimage.find_objects(np.clip(pred, 0, None), max_label=num_classes - 1)
    boxes_g = ndimage.find_objects(np.clip(gt, 0, None), max_label=num_classes - 1)
    boxes_p += [None] * (num_classes - 1 - len(boxes_p))
    boxes_g += [None] * (num_classes - 1 - len(boxes_g))
    for c in range(1, num_classes):
        bp, bg = boxes_p[c - 1], boxes_g[c - 1]
        if bp is None or bg is None:
            values = both_empty if bp is None and bg is None else one_empty
        else:
            box = _union_box([bp, bg], pred.shape, margin=1)
            d_pg, d_gp = _monai_distances(pred[box] == c, gt[box] == c, spacing)
            values = summarize(d_pg, d_gp, nsd_tolerance)
        out["asd"][c - 1], out["hd95"][c - 1], out["nsd"][c - 1] = values
    return out


# ----------------------------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------------------------


def paper_case_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    num_classes: int,
    target_shape: Sequence[int] | None = PAPER_SHAPE,
    nsd_tolerance: float = 1.0,
    penalty: float = PAPER_PENALTY,
    empty_prediction_rule: bool = True,
) -> dict[str, np.ndarray]:
    """GALoss/SCDL test metrics of one case (see the module docstring, ``paper`` protocol).

    Args:
        pred, gt: integer label maps (X, Y, Z), numpy or torch; may differ in shape when resized.
        num_classes: C including background; metrics are for classes 1..C-1.
        target_shape: grid both maps are resized to (nearest); None keeps them as they are.
        nsd_tolerance: NSD tolerance in voxels of the resized grid.
        penalty: ASD/HD95 when exactly one of prediction/label of a class is empty.
        empty_prediction_rule: all metrics 0 when the prediction has no foreground at all.

    Returns ``{"dice", "asd", "hd95", "nsd"}`` -> float arrays (C-1,), in voxel units.
    """
    p, g = to_label_array(pred), to_label_array(gt)
    if target_shape is not None:
        p, g = resize_labels_nearest(p, target_shape), resize_labels_nearest(g, target_shape)
    if empty_prediction_rule and not np.any(p > 0):
        return {m: np.zeros(num_classes - 1) for m in METRICS}
    return _class_metrics(
        p,
        g,
        num_classes,
        spacing=np.ones(p.ndim),
        nsd_tolerance=nsd_tolerance,
        protocol="paper",
        one_empty=(penalty, penalty, 0.0),
        both_empty=(0.0, 0.0, 1.0),
    )


def standard_case_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    num_classes: int,
    spacing: float | Sequence[float] = (1.0, 1.0, 1.0),
    nsd_tolerance: float = 1.0,
    empty_distance: float | None = None,
) -> dict[str, np.ndarray]:
    """Native-resolution metrics of one case in physical units (``standard`` protocol).

    Args:
        pred, gt: integer label maps (X, Y, Z) of the same shape, numpy or torch.
        num_classes: C including background; metrics are for classes 1..C-1.
        spacing: voxel size in mm per axis (voxel units for (1, 1, 1)).
        nsd_tolerance: NSD tolerance tau in mm.
        empty_distance: ASD/HD95 when exactly one of prediction/label is empty; default the image
            diagonal ``sqrt(sum (shape_i * spacing_i)^2)`` in mm. Pass ``float("nan")`` to exclude.

    Returns ``{"dice", "asd", "hd95", "nsd"}`` -> float arrays (C-1,); ASD is the symmetric ASSD;
    classes absent from both maps are NaN.
    """
    p, g = to_label_array(pred), to_label_array(gt)
    sp = _normalize_spacing(spacing, p.ndim)
    if empty_distance is None:
        empty_distance = float(np.sqrt(np.sum((np.asarray(p.shape) * sp) ** 2)))
    nan = float("nan")
    return _class_metrics(
        p,
        g,
        num_classes,
        spacing=sp,
        nsd_tolerance=nsd_tolerance,
        protocol="standard",
        one_empty=(empty_distance, empty_distance, 0.0),
        both_empty=(nan, nan, nan),
    )


def compute_case_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    num_classes: int,
    protocol: Protocol = "standard",
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """Dispatches to :func:`paper_case_metrics` or :func:`standard_case_metrics` (``kwargs`` go
    to the chosen one). Returns metric -> (C-1,) arrays."""
    if check_protocol(protocol) == "paper":  # an unknown name raises there
        return paper_case_metrics(pred, gt, num_classes, **kwargs)
    return standard_case_metrics(pred, gt, num_classes, **kwargs)


def case_metric_kwargs(
    protocol: str, metrics_cfg: Mapping | None, spacing: list[float]
) -> dict[str, Any]:
    """Keyword arguments of :func:`compute_case_metrics` for one case.

    ``metrics_cfg``: ``nsd_tolerance`` (mm for ``standard``, voxels of the resized grid for
    ``paper``), ``paper: {shape, penalty, empty_prediction_rule}``, ``standard: {empty_distance}``.
    """
    m = dict(metrics_cfg or {})
    kw: dict[str, Any] = {"nsd_tolerance": float(m.get("nsd_tolerance", 1.0))}
    if protocol == "paper":
        p = dict(m.get("paper") or {})
        shape = p.get("shape", (160, 160, 80))
        kw["target_shape"] = tuple(int(s) for s in shape) if shape is not None else None
        kw["penalty"] = float(p.get("penalty", 128.0))
        kw["empty_prediction_rule"] = bool(p.get("empty_prediction_rule", True))
    elif protocol == "standard":
        s = dict(m.get("standard") or {})
        kw["spacing"] = tuple(float(v) for v in spacing)
        if s.get("empty_distance") is not None:
            kw["empty_distance"] = float(s["empty_distance"])
    else:
        check_protocol(protocol)
    return kw


def check_protocol(protocol: str) -> Protocol:
    """``protocol`` when it is one of :data:`PROTOCOLS`, else an :class:`InputError` naming it."""
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol must be {'|'.join(PROTOCOLS)}, got {protocol!r}")
    return cast(Protocol, protocol)
