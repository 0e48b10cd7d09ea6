"""Segment new scans with a trained checkpoint: ``python src/predict.py ckpt_path=... input=...
output=...``.

Every input NIfTI goes through the run's own preprocessing (``data.protocol`` of the run config,
:func:`scdl.data.prepare.preprocess_case`), sliding-window inference and argmax on the preprocessed
grid, then the label map is resampled (nearest neighbour) back onto the grid of the input file and
written with the input's shape and affine. The helpers :func:`segment_volume`,
:func:`labels_to_original_grid` and :func:`save_label_nifti` are shared with ``eval.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from scdl.evaluation.checkpoint import (
    inference_context,
    load_module_from_checkpoint,
    resolve_checkpoint,
    select_device,
    with_class_mismatch_flag,
)
from scdl.utils.errors import InputError, InputFileError
from scdl.utils.files import repeated
from scdl.utils.progress import progress_iter

log = logging.getLogger(__name__)

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


# ----------------------------------------------------------------------------------------------
# Shared helpers (eval.py uses them too)
# ----------------------------------------------------------------------------------------------


def label_dtype(num_classes: int) -> np.dtype:
    """Smallest unsigned integer type holding labels ``0..num_classes-1``."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


def segment_volume(
    module: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    device: torch.device,
    precision: str | int | None = None,
) -> np.ndarray:
    """Whole-volume prediction on the preprocessed grid.

    ``image`` (X, Y, Z) float -> label map (X, Y, Z) (argmax of the module's sliding-window
    probabilities, :meth:`SemiSupervisedModule.predict_volume`; frameworks with two networks average
    inside their ``segment``).
    """
    x = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)[None, None].to(device)
    with inference_context(precision, device):
        probs = module.predict_volume(x)  # (1, C, X, Y, Z)
    labels = probs.argmax(dim=1)[0].to("cpu", torch.int64).numpy()
    return labels.astype(label_dtype(int(probs.shape[1])))


#: how far (in preprocessed voxels) a source voxel centre may fall outside the preprocessed grid
#: and still take the label of the edge voxel: resampling and resizing keep the field of view
#: only to within half a voxel, and a flip puts the edge at -1e-15
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


# ----------------------------------------------------------------------------------------------
# predict.py
# ----------------------------------------------------------------------------------------------


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii.gz`` / ``.nii`` and without the nnU-Net channel suffix ``_0000``."""
    name = Path(path).name
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return name[:-5] if name.endswith("_0000") else name


def list_inputs(source: str | Path) -> list[Path]:
    """One NIfTI file, or every ``*.nii.gz`` / ``*.nii`` directly inside a folder (sorted; hidden
    files such as macOS ``._*`` copies are skipped, other files named in a warning)."""
    src = Path(source).expanduser()
    if src.is_file():
        return [src]
    if src.is_dir():
        visible = [p for p in sorted(src.iterdir()) if not p.name.startswith(".")]
        files = [p for p in visible if p.is_file() and p.name.endswith(NIFTI_EXTENSIONS)]
        skipped = [p.name for p in visible if p not in files]
        if skipped:
            log.warning("%s: not NIfTI, not read: %s", src, ", ".join(skipped[:10]))
        if not files:
            raise InputFileError(f"no .nii.gz / .nii files in {src}")
        stems = [nifti_stem(f) for f in files]
        dup = repeated(stems)
        if dup:
            raise InputError(f"several inputs would write the same output: {dup}")
        return files
    raise InputFileError(f"input not found: {src}")


class PredictOutputError(ValueError, CompactHydraException):
    """An output folder that would overwrite or mix with the input scans."""


def check_output_folder(inputs: list[Path], output: Path) -> None:
    """Refuses an ``output`` folder that holds input scans: label maps would overwrite them (a
    scan without ``_0000`` has the label's name) or mix with them (a second run would read the
    label maps as scans)."""
    out = output.expanduser().resolve()
    inside = [p for p in inputs if p.resolve().parent == out]
    if inside:
        shown = ", ".join(p.name for p in inside[:3]) + (" ..." if len(inside) > 3 else "")
        raise PredictOutputError(
            f"output={output} holds the input scans ({shown}): the label maps would overwrite "
            f"or mix with them. Nothing was written. Choose another folder, e.g. "
            f"output={output.expanduser().resolve().parent / (out.name + '_pred')}"
        )


def run_protocol(run_cfg: DictConfig):
    """The preprocessing protocol the run trained with, fully resolved.

    A protocol may leave values to the data set (``spacing: median``, ``normalisation: auto`` or
    ``ct`` statistics): those resolved values live in the cache index, so the index is read first
    when its ``config_hash`` matches the run's protocol; otherwise the protocol must be complete in
    the config.
    """
    from scdl.data.catalog import cached_protocol, protocol_from_config

    data_cfg = run_cfg.data
    protocol = cached_protocol(data_cfg)
    if protocol is not None:
        return protocol
    try:
        return protocol_from_config(data_cfg.protocol)
    except ValueError as err:
        raise InputError(
            f"{err}. The resolved values are stored in the run's cache index "
            f"({data_cfg.cache_dir}/index.json), which is missing or from another protocol: point "
            "data.cache_dir at the training cache (predict.py ... +data.cache_dir=...) or set "
            "the values in data.protocol"
        ) from err


def predict(cfg: DictConfig) -> list[Path]:
    """Segments ``cfg.input`` (file or folder) into ``cfg.output``; returns the written files.

    Config keys (``conf/predict.yaml``): ``ckpt_path``, ``input``, ``output``, ``data`` (merged
    over the run's data section, e.g. ``+data.cache_dir=...``), ``inference``
    (sliding-window overrides), ``device``, ``precision`` (null: the run's trainer precision),
    ``overwrite``, ``progress``.
    """
    from scdl.data.layouts import ARRAY_LAYOUTS, RawCase
    from scdl.data.prepare import preprocess_case

    inputs = list_inputs(cfg.input)
    out_dir = Path(cfg.output).expanduser()
    check_output_folder(inputs, out_dir)  # before the model is loaded: fail in a second
    ckpt = resolve_checkpoint(cfg.ckpt_path)
    overrides = (
        {"data": OmegaConf.to_container(cfg.data, resolve=True)} if cfg.get("data") else None
    )
    module, run_cfg = load_module_from_checkpoint(
        ckpt, with_class_mismatch_flag(overrides, cfg), inference=cfg.get("inference")
    )
    if str(run_cfg.data.get("layout")) in ARRAY_LAYOUTS:
        raise InputError(
            f"the run trained on preprocessed arrays (data.layout={run_cfg.data.layout}) without "
            "orientation or spacing: NIfTI scans cannot be brought into that frame reliably. "
            "Use eval.py on the array data set, or train on NIfTI data (docs/real-data.md)"
        )
    device = select_device(cfg.get("device", "auto"))
    module.to(device)
    precision = cfg.get("precision") or run_cfg.get("trainer", {}).get("precision")
    protocol = run_protocol(run_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("predicting %d scan(s) with %s -> %s", len(inputs), ckpt, out_dir)

    written = []
    for path in progress_iter(inputs, "predict", bool(cfg.get("progress", True))):
        target = out_dir / f"{nifti_stem(path)}.nii.gz"
        if target.exists() and not cfg.get("overwrite", True):
            log.info("skipping %s: %s exists", path.name, target)
            written.append(target)
            continue
        t0 = time.perf_counter()
        image, _, meta = preprocess_case(RawCase(nifti_stem(path), path), protocol)
        labels = segment_volume(module, image, device, precision)
        reference = nib.load(str(path))
        native = labels_to_original_grid(labels, meta)
        if native.shape != reference.shape[:3]:
            raise RuntimeError(f"{path}: prediction {native.shape} vs image {reference.shape}")
        written.append(save_label_nifti(native, target, reference.affine, reference))
        log.info("%s: %s in %.1f s", path.name, target, time.perf_counter() - t0)
    return written
