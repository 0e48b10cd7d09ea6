"""Per-case segmentation metrics (Dice, ASD, HD95, NSD), aggregation and reporting.

Two protocols (``docs/scdl-method.md`` §5, §8 item 13):

``paper`` — the GALoss/SCDL test protocol, for numbers comparable with the published tables:
    prediction and label are resized to ``target_shape`` (default (160, 160, 80)) with PyTorch's
    ``nearest`` interpolation; distances are in voxels of that grid. Per foreground class:

    * both present: Dice, ASD = medpy ``asd(pred, gt)`` = mean over the surface voxels of the
      prediction of the distance to the nearest surface voxel of the label (directed pred -> GT);
      HD95 = medpy ``hd95`` (see below); NSD (see below, tolerance in voxels);
    * exactly one empty: Dice 0, ASD 128, HD95 128, NSD 0;
    * both empty: Dice 1, ASD 0, HD95 0, NSD 1;
    * if the whole resized prediction has no foreground voxel, **all** metrics of the case are 0
      (Dice 0 but also ASD 0 and HD95 0, i.e. lenient on distances) — the released code does this;
      ``empty_prediction_rule=False`` disables it.

    The released code reports HD95 and NSD as constant 0; the real values computed here are extra
    metrics and not comparable with published HD95/NSD columns.

``standard`` — native resolution, physical units (mm via ``spacing``):
    * both present: Dice; ASD = ASSD, the mean of the pooled distances
      ``d(S_pred -> S_gt) U d(S_gt -> S_pred)``, i.e. ``(sum of both) / (|S_pred| + |S_gt|)``
      (medpy >= 0.5 ``assd`` and MONAI ``SurfaceDistanceMetric(symmetric=True)``; medpy 0.4 took
      the mean of the two directed means instead); HD95; NSD at tolerance ``tau`` mm;
    * both empty: all metrics NaN (the class is excluded from that case's means);
    * exactly one empty: Dice 0, NSD 0, ASD = HD95 = ``empty_distance`` (default: the image
      diagonal in mm, the largest distance possible inside the volume).

Common definitions (both protocols). The surface ``S`` of a binary mask is the set of its voxels
with at least one face neighbour (``connectivity=1``) outside the mask; the volume border counts as
outside (medpy convention). ``d(S_a -> S_b)`` is, for every voxel of ``S_a``, the Euclidean distance
(with ``spacing``) to the nearest voxel of ``S_b``.

* Dice = ``2 |P & G| / (|P| + |G|)``.
* HD95 = 95th percentile (linear interpolation) of the pooled distances
  ``d(S_pred -> S_gt) U d(S_gt -> S_pred)`` (medpy ``hd95``).
* NSD at tolerance tau = ``(#{d(S_pred -> S_gt) <= tau} + #{d(S_gt -> S_pred) <= tau}) /
  (|S_pred| + |S_gt|)``: a voxel-counting surface Dice (every surface voxel weighs the same; no
  sub-voxel surfel areas as in DeepMind's ``surface-distance``).

Speed: distances are computed on the bounding box of both masks plus a one-voxel margin (exact,
since all surface voxels lie inside it) with ``scipy.ndimage.distance_transform_edt``; the boxes of
all classes come from one ``scipy.ndimage.find_objects`` pass per label map.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

METRICS: tuple[str, ...] = ("dice", "asd", "hd95", "nsd")
PAPER_SHAPE: tuple[int, int, int] = (160, 160, 80)
PAPER_PENALTY = 128.0

ArrayLike = np.ndarray | torch.Tensor
Protocol = Literal["paper", "standard"]


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


def _surface(mask: np.ndarray, connectivity: int) -> np.ndarray:
    # Border voxels (mask minus its erosion); outside the array counts as background.
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _union_box(
    boxes: Sequence[tuple[slice, ...] | None], shape: tuple[int, ...], margin: int
) -> tuple[slice, ...]:
    boxes = [b for b in boxes if b is not None]
    return tuple(
        slice(
            max(min(b[d].start for b in boxes) - margin, 0),
            min(max(b[d].stop for b in boxes) + margin, n),
        )
        for d, n in enumerate(shape)
    )


def _directed_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray, connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``d(S_pred -> S_gt)`` and ``d(S_gt -> S_pred)`` for two non-empty masks given in
    a common crop that keeps at least one background voxel around both (or touches the volume
    border)."""
    s_pred, s_gt = _surface(pred, connectivity), _surface(gt, connectivity)
    dt_gt = ndimage.distance_transform_edt(~s_gt, sampling=spacing)
    dt_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing)
    return dt_gt[s_pred], dt_pred[s_gt]


def surface_distances(
    pred: ArrayLike,
    gt: ArrayLike,
    spacing: float | Sequence[float] | None = None,
    connectivity: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty binary masks.

    Returns ``(d_pred_to_gt, d_gt_to_pred)``: for every surface voxel of ``pred`` the distance to the
    nearest surface voxel of ``gt`` (medpy's ``__surface_distances(pred, gt)``) and vice versa, in
    the units of ``spacing`` (voxels if None). Shapes: ``pred``, ``gt`` (X, Y, Z) bool/int.
    """
    p, g = to_label_array(pred).astype(bool), to_label_array(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {g.shape}")
    if not p.any() or not g.any():
        raise ValueError("surface distances need two non-empty masks")
    box = _union_box(
        [ndimage.find_objects(p.astype(np.uint8))[0], ndimage.find_objects(g.astype(np.uint8))[0]],
        p.shape,
        margin=1,
    )
    return _directed_distances(p[box], g[box], _normalize_spacing(spacing, p.ndim), connectivity)


def _present_metrics(
    d_pg: np.ndarray, d_gp: np.ndarray, nsd_tolerance: float, symmetric_asd: bool
) -> tuple[float, float, float]:
    """(asd, hd95, nsd) from the two directed distance sets."""
    pooled = np.concatenate([d_pg, d_gp])
    asd = pooled.mean() if symmetric_asd else d_pg.mean()
    hd95 = np.percentile(pooled, 95)
    tol = nsd_tolerance + 1e-9  # distances are sqrt of sums; keep exact ties inside
    nsd = ((d_pg <= tol).sum() + (d_gp <= tol).sum()) / (d_pg.size + d_gp.size)
    return float(asd), float(hd95), float(nsd)


def _class_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: np.ndarray,
    nsd_tolerance: float,
    symmetric_asd: bool,
    connectivity: int,
    one_empty: tuple[float, float, float, float],
    both_empty: tuple[float, float, float, float],
) -> dict[str, np.ndarray]:
    """Metrics per foreground class 1..C-1 with the given empty-mask rules ``(dice, asd, hd95, nsd)``."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and label {gt.shape} differ in shape")
    out = {m: np.empty(num_classes - 1) for m in METRICS}
    # One pass per map for all bounding boxes; labels outside [1, C) are ignored.
    boxes_p = ndimage.find_objects(np.clip(pred, 0, None), max_label=num_classes - 1)
    boxes_g = ndimage.find_objects(np.clip(gt, 0, None), max_label=num_classes - 1)
    boxes_p += [None] * (num_classes - 1 - len(boxes_p))
    boxes_g += [None] * (num_classes - 1 - len(boxes_g))
    for c in range(1, num_classes):
        bp, bg = boxes_p[c - 1], boxes_g[c - 1]
        if bp is None or bg is None:
            values = both_empty if bp is None and bg is None else one_empty
            for m, v in zip(METRICS, values, strict=True):
                out[m][c - 1] = v
            continue
        box = _union_box([bp, bg], pred.shape, margin=1)
        p, g = pred[box] == c, gt[box] == c
        n_p, n_g = int(p.sum()), int(g.sum())
        out["dice"][c - 1] = 2.0 * np.logical_and(p, g).sum() / (n_p + n_g)
        d_pg, d_gp = _directed_distances(p, g, spacing, connectivity)
        asd, hd95, nsd = _present_metrics(d_pg, d_gp, nsd_tolerance, symmetric_asd)
        out["asd"][c - 1], out["hd95"][c - 1], out["nsd"][c - 1] = asd, hd95, nsd
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
    connectivity: int = 1,
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
        symmetric_asd=False,
        connectivity=connectivity,
        one_empty=(0.0, penalty, penalty, 0.0),
        both_empty=(1.0, 0.0, 0.0, 1.0),
    )


def standard_case_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    num_classes: int,
    spacing: float | Sequence[float] = (1.0, 1.0, 1.0),
    nsd_tolerance: float = 1.0,
    empty_distance: float | None = None,
    connectivity: int = 1,
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
        symmetric_asd=True,
        connectivity=connectivity,
        one_empty=(0.0, empty_distance, empty_distance, 0.0),
        both_empty=(nan, nan, nan, nan),
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
    if protocol == "paper":
        return paper_case_metrics(pred, gt, num_classes, **kwargs)
    if protocol == "standard":
        return standard_case_metrics(pred, gt, num_classes, **kwargs)
    raise ValueError(f"unknown protocol {protocol!r} (expected 'paper' or 'standard')")


# ----------------------------------------------------------------------------------------------
# Aggregation and reporting
# ----------------------------------------------------------------------------------------------


def _nan_stats(x: np.ndarray, axis: int | None = None) -> tuple[Any, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN, silently
        return np.nanmean(x, axis=axis), np.nanstd(x, axis=axis)


def _num(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def aggregate_metrics(
    cases: Sequence[Mapping[str, ArrayLike]],
    class_names: Sequence[str] | None = None,
    case_ids: Sequence[str] | None = None,
    protocol: str | None = None,
) -> dict[str, Any]:
    """Per-class mean +- std over cases and overall means.

    Args:
        cases: per-case results, each metric -> (C-1,) values (as returned by the case functions).
        class_names: names of the foreground classes (default ``class_1`` ...).
        case_ids: optional case identifiers, stored with the per-case values.
        protocol: optional label stored in the result.

    Returns a JSON-ready dict (NaN -> None)::

        {"protocol", "metrics": [...], "classes": [...], "num_cases",
         "per_class": {class: {metric: {"mean", "std", "n"}}},
         "overall": {metric: {"mean", "std"}},
         "per_case": [{"case", "values": {class: {metric: value}}}]}

    Per-class mean/std are over cases (population std, as ``np.std``), ignoring NaN. The overall mean
    is the mean of the per-class means (each class weighs the same; equals the paper's "Avg");
    the overall std is the std over cases of the per-case class average.
    """
    if not cases:
        raise ValueError("no cases to aggregate")
    metrics = [m for m in METRICS if m in cases[0]] + [m for m in cases[0] if m not in METRICS]
    stacked = {
        m: np.stack([np.asarray(c[m], dtype=np.float64).reshape(-1) for c in cases])
        for m in metrics
    }  # (cases, C-1)
    n_cls = stacked[metrics[0]].shape[1]
    names = (
        list(class_names)
        if class_names is not None
        else [f"class_{i}" for i in range(1, n_cls + 1)]
    )
    if len(names) != n_cls:
        raise ValueError(f"{len(names)} class names for {n_cls} classes")
    ids = list(case_ids) if case_ids is not None else [str(i) for i in range(len(cases))]
    per_class: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in names}
    overall: dict[str, dict[str, Any]] = {}
    for m, arr in stacked.items():
        mean, std = _nan_stats(arr, axis=0)
        valid = np.sum(~np.isnan(arr), axis=0)
        for j, n in enumerate(names):
            per_class[n][m] = {"mean": _num(mean[j]), "std": _num(std[j]), "n": int(valid[j])}
        class_mean, _ = _nan_stats(mean)
        _, case_std = _nan_stats(_nan_stats(arr, axis=1)[0])
        overall[m] = {"mean": _num(class_mean), "std": _num(case_std)}
    per_case = [
        {
            "case": cid,
            "values": {
                n: {m: _num(stacked[m][i, j]) for m in metrics} for j, n in enumerate(names)
            },
        }
        for i, cid in enumerate(ids)
    ]
    return {
        "protocol": protocol,
        "metrics": metrics,
        "classes": names,
        "num_cases": len(cases),
        "per_class": per_class,
        "overall": overall,
        "per_case": per_case,
    }


def _fmt_csv(v: float | None) -> str:
    return "nan" if v is None else repr(float(v))


def save_metrics(
    summary: Mapping[str, Any], out_dir: str | Path, stem: str = "metrics"
) -> dict[str, Path]:
    """Writes ``{stem}.json`` (the whole summary), ``{stem}.csv`` (class rows + a ``mean`` row,
    columns ``<metric>_mean``, ``<metric>_std``) and ``{stem}_per_case.csv`` (case, class, metrics).

    Returns the paths by kind (``json``, ``csv``, ``per_case_csv``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = list(summary["metrics"])
    paths = {
        "json": out / f"{stem}.json",
        "csv": out / f"{stem}.csv",
        "per_case_csv": out / f"{stem}_per_case.csv",
    }
    paths["json"].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
        for name in summary["classes"]:
            stats = summary["per_class"][name]
            w.writerow([name] + [_fmt_csv(stats[m][s]) for m in metrics for s in ("mean", "std")])
        ov = summary["overall"]
        w.writerow(["mean"] + [_fmt_csv(ov[m][s]) for m in metrics for s in ("mean", "std")])
    with paths["per_case_csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "class", *metrics])
        for row in summary.get("per_case", []):
            for name, vals in row["values"].items():
                w.writerow([row["case"], name] + [_fmt_csv(vals[m]) for m in metrics])
    return paths


_PERCENT_METRICS = ("dice", "nsd")


def format_metrics_table(
    summary: Mapping[str, Any],
    use_rich: bool = False,
    percent: bool = True,
    digits: int = 2,
    title: str | None = None,
) -> str:
    """Renders a class x metric table (cells ``mean ± std``, last row the overall mean) as text.

    ``percent`` shows Dice and NSD x100 (as in the papers); distances keep their unit. With
    ``use_rich`` the table is drawn by ``rich`` (box characters, no colour codes).
    """
    metrics = list(summary["metrics"])

    def cell(stats: Mapping[str, Any], m: str) -> str:
        mean, std = stats["mean"], stats["std"]
        if mean is None:
            return "-"
        k = 100.0 if percent and m in _PERCENT_METRICS else 1.0
        return f"{mean * k:.{digits}f} ± {(std or 0.0) * k:.{digits}f}"

    header = ["class"] + [f"{m} (%)" if percent and m in _PERCENT_METRICS else m for m in metrics]
    rows = [
        [n] + [cell(summary["per_class"][n][m], m) for m in metrics] for n in summary["classes"]
    ]
    footer = ["mean"] + [cell(summary["overall"][m], m) for m in metrics]
    title = (
        title
        if title is not None
        else f"{summary.get('protocol') or 'metrics'} ({summary['num_cases']} cases)"
    )

    if use_rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            table.add_row(*r)
        table.add_section()
        table.add_row(*footer)
        buf = io.StringIO()
        Console(file=buf, width=200, color_system=None, force_terminal=False).print(table)
        return buf.getvalue()

    widths = [max(len(r[i]) for r in [header, *rows, footer]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            (c.ljust(w) if i == 0 else c.rjust(w))
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    sep = "-" * len(line(header))
    return "\n".join([title, line(header), sep, *map(line, rows), sep, line(footer)]) + "\n"
