"""Score a folder of predicted NIfTI label maps against a folder of reference label maps, no model
involved (like nnU-Net's ``evaluate_folder``):

``python src/eval_folder.py pred_dir=<folder> ref_dir=<folder> [dataset_json=<dataset.json> |
class_names=[background,liver,...]] [protocol=standard|paper] [output_dir=<folder>]``

Files are matched by name (without ``.nii.gz`` / ``.nii``); every prediction needs a reference and,
unless ``allow_missing``, every reference a prediction. Each pair must share shape and affine (the
error names the file). Cases are scored with :mod:`scdl.evaluation.protocols` (``standard``: the
reference's voxel size in mm) and written in the one results schema of
:mod:`scdl.metrics.results` (``metrics.json``, ``metrics.csv``, ``metrics_per_case.csv``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from scdl.evaluation.protocols import (
    case_metric_kwargs,
    check_protocol,
    compute_case_metrics,
    to_label_array,
)
from scdl.metrics.results import aggregate_metrics, format_metrics_table, save_metrics
from scdl.utils.errors import InputError, InputFileError
from scdl.utils.files import nifti_case_name
from scdl.utils.progress import progress_iter

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

log = logging.getLogger(__name__)


def list_label_maps(folder: str | Path) -> dict[str, Path]:
    """Case name (file name without ``.nii.gz`` / ``.nii``) -> file, for the NIfTI files directly
    inside ``folder`` (hidden files such as macOS ``._*`` copies skipped)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputFileError(f"not a folder: {root}")
    found: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        name = nifti_case_name(p) if p.is_file() and not p.name.startswith(".") else None
        if name is None:
            continue
        if name in found:
            raise InputError(f"{root}: {found[name].name} and {p.name} are the same case")
        found[name] = p
    if not found:
        raise InputFileError(f"no .nii.gz / .nii files in {root}")
    return found


def match_cases(
    preds: Mapping[str, Path], refs: Mapping[str, Path], allow_missing: bool = False
) -> list[str]:
    """Case names to score (sorted). Raises when a prediction has no reference, or (unless
    ``allow_missing``) a reference has no prediction; the message lists the files."""
    extra = sorted(set(preds) - set(refs))
    if extra:
        raise InputError(
            f"{len(extra)} prediction(s) without a reference file of the same name: "
            + ", ".join(preds[c].name for c in extra[:10])
        )
    missing = sorted(set(refs) - set(preds))
    if missing:
        msg = f"{len(missing)} reference(s) without a prediction: " + ", ".join(
            refs[c].name for c in missing[:10]
        )
        if not allow_missing:
            raise InputError(msg + " (allow_missing=true scores only the matched cases)")
        log.warning(msg)
    cases = sorted(set(preds) & set(refs))
    if not cases:
        raise InputError("no prediction matches a reference file")
    return cases


def class_names_from(
    class_names: Sequence[str] | None = None,
    dataset_json: str | Path | None = None,
    num_classes: int | None = None,
) -> list[str] | None:
    """All C class names (index = label, background first) from an explicit list, an nnU-Net /
    MSD ``dataset.json`` (``labels``: ``{"name": id}`` or ``{"id": "name"}``) or ``num_classes``
    (``class_1`` ...). None when nothing is given (then the labels found decide)."""
    if class_names:
        return [str(n) for n in class_names]
    if dataset_json:
        labels = json.loads(Path(dataset_json).read_text())["labels"]
        pairs = []
        for k, v in labels.items():
            if isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
                pairs.append((int(v), str(k)))  # nnU-Net v2: name -> id
            elif isinstance(k, str) and k.isdigit():
                pairs.append((int(k), str(v)))  # MSD / nnU-Net v1: id -> name
            else:
                raise InputError(f"{dataset_json}: cannot read label {k!r}: {v!r} (region labels?)")
        ids = sorted(i for i, _ in pairs)
        if ids != list(range(len(ids))):
            raise InputError(f"{dataset_json}: label ids must be 0..C-1, got {ids}")
        return [n for _, n in sorted(pairs)]
    if num_classes:
        return ["background"] + [f"class_{i}" for i in range(1, int(num_classes))]
    return None


def check_pair(pred_path: Path, ref_path: Path, affine_atol: float = 1e-3) -> tuple[float, ...]:
    """Checks from the headers alone that a prediction lies on its reference's grid (shape and
    affine; the error names the file). Returns the reference's voxel size."""
    import nibabel as nib

    pred_img = cast("SpatialImage", nib.load(str(pred_path)))
    ref_img = cast("SpatialImage", nib.load(str(ref_path)))
    p_shape, r_shape = _squeeze_shape(pred_img.shape), _squeeze_shape(ref_img.shape)
    if p_shape != r_shape:
        raise InputError(
            f"{pred_path.name}: shape {p_shape} differs from the reference {ref_path} {r_shape}"
        )
    if not np.allclose(pred_img.affine, ref_img.affine, atol=affine_atol):
        raise InputError(
            f"{pred_path.name}: affine differs from the reference {ref_path} (tolerance "
            f"{affine_atol}):\n{np.round(pred_img.affine, 4)}\nvs\n{np.round(ref_img.affine, 4)}"
        )
    return tuple(float(z) for z in ref_img.header.get_zooms()[: len(r_shape)])


def _squeeze_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def load_labels(path: Path, num_classes: int | None = None) -> np.ndarray:
    """An integer label map from a NIfTI file (trailing singleton dims dropped); with
    ``num_classes``, labels must lie in ``[0, C)`` (the error names the file)."""
    import nibabel as nib

    data = np.asanyarray(cast("SpatialImage", nib.load(str(path))).dataobj)
    data = data.reshape(_squeeze_shape(data.shape))
    try:
        labels = to_label_array(data)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
    if labels.size and labels.min() < 0:
        raise InputError(f"{path}: negative label {labels.min()}")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        raise InputError(f"{path}: label {labels.max()} but only {num_classes} classes")
    return labels


def evaluate_folder(
    pred_dir: str | Path,
    ref_dir: str | Path,
    class_names: Sequence[str] | None = None,
    protocol: str = "standard",
    output_dir: str | Path | None = None,
    metrics_cfg: Mapping | None = None,
    allow_missing: bool = False,
    affine_atol: float = 1e-3,
    progress: bool = False,
    print_table: bool = True,
) -> dict[str, Any]:
    """Scores every prediction in ``pred_dir`` against the same-named file of ``ref_dir``.

    Args:
        class_names: all C names (background first, index = label); None: ``class_<i>`` up to the
            largest label found.
        protocol: ``standard`` (distances in mm from the reference header) or ``paper``.
        output_dir: where ``metrics.{json,csv}`` and ``metrics_per_case.csv`` go; None writes nothing.
        metrics_cfg: ``nsd_tolerance``, ``paper: {...}``, ``standard: {...}`` as in ``conf/eval.yaml``.
        allow_missing: score the matched cases when some references have no prediction.
        affine_atol: absolute tolerance of the affine comparison (mm).

    Returns the results dict (:func:`aggregate_metrics` schema) plus ``pred_dir``, ``ref_dir``,
    ``metric_settings``, ``seconds`` and ``files``.
    """
    protocol = check_protocol(protocol)  # the same string, typed as a protocol name
    preds, refs = list_label_maps(pred_dir), list_label_maps(ref_dir)
    cases = match_cases(preds, refs, allow_missing)
    spacings = {c: check_pair(preds[c], refs[c], affine_atol) for c in cases}  # fail early
    names = list(class_names) if class_names else None
    if names is None:  # one extra read of every file: the largest label decides
        top = max(int(load_labels(f).max(initial=0)) for c in cases for f in (preds[c], refs[c]))
        names = ["background"] + [f"class_{i}" for i in range(1, max(top, 1) + 1)]
        log.warning("no class names given: %d classes from the labels found", len(names))
    num_classes = len(names)

    t0 = time.perf_counter()
    results = []
    for case in progress_iter(cases, f"scoring ({protocol})", progress):
        pred = load_labels(preds[case], num_classes)
        ref = load_labels(refs[case], num_classes)
        kwargs = case_metric_kwargs(protocol, metrics_cfg, list(spacings[case]))
        results.append(compute_case_metrics(pred, ref, num_classes, protocol, **kwargs))
    summary = aggregate_metrics(results, names[1:], cases, protocol)
    settings = case_metric_kwargs(protocol, metrics_cfg, [1.0, 1.0, 1.0])
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    if protocol == "standard":
        settings["spacing"] = "voxel size of each reference file (mm)"
    summary.update(
        {
            "pred_dir": str(Path(pred_dir).expanduser().resolve()),
            "ref_dir": str(Path(ref_dir).expanduser().resolve()),
            "metric_settings": settings,
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )
    if output_dir is not None:
        paths = save_metrics(summary, output_dir)
        summary["files"] = {k: str(v) for k, v in paths.items()}
        log.info("metrics written to %s", output_dir)
    if print_table:
        title = f"{protocol} metrics ({len(cases)} cases) — {Path(pred_dir).name}"
        print(format_metrics_table(summary, use_rich=True, title=title))
    return summary


def evaluate_folder_from_config(cfg: Mapping) -> dict[str, Any]:
    """``conf/eval_folder.yaml`` -> :func:`evaluate_folder`."""
    protocol = str(cfg.get("protocol", "standard"))
    names = class_names_from(
        cfg.get("class_names"), cfg.get("dataset_json"), cfg.get("num_classes")
    )
    out = cfg.get("output_dir") or Path(cfg["pred_dir"]).expanduser() / f"eval_{protocol}"
    return evaluate_folder(
        cfg["pred_dir"],
        cfg["ref_dir"],
        class_names=names,
        protocol=protocol,
        output_dir=out,
        metrics_cfg=cfg.get("metrics"),
        allow_missing=bool(cfg.get("allow_missing", False)),
        affine_atol=float(cfg.get("affine_atol", 1e-3)),
        progress=bool(cfg.get("progress", True)),
    )
