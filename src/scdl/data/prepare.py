"""Preprocessing: decode each NIfTI once, reorient, resample, window and normalise with MONAI
transforms, and write a memory-mappable cache that training reads instead of NIfTI.

Preprocessed arrays of the reference code bases (``.npy`` / ``.h5`` raw cases, see
:mod:`scdl.data.layouts`) go through the same cache: they have no affine, so they are not
reoriented or resampled, only transposed (``transpose``), optionally resized and normalised.

Cache layout (``cache_dir``)::

    index.json               class names, protocol, its hash, the case list
    <case>_image.npy         float32 (X, Y, Z), RAS orientation
    <case>_label.npy         uint8   (X, Y, Z)   (uint16 above 255 classes; absent if unlabeled)
    <case>.json              meta: shapes, spacing, original affine/shape, protocol hash, raw file
                             stamps (sources), empty_label, extra flags

A case is trusted only when its ``<case>.json`` exists, carries the current protocol hash and its
raw files are those recorded in it (``sources``: size, mtime and blake2b; :func:`case_is_cached`);
the meta file is written last, by atomic rename, so an interrupted run never leaves a half-written
case that a later run believes (it is simply redone). Re-running with the same protocol and raw
files is a no-op. Before writing, every case to be written is checked (:mod:`scdl.data.checks`):
one bad case stops the run before any is written.

Data-set level statistics that a protocol may need (``normalisation="ct"``: foreground intensity
percentiles, mean and std; a median target spacing) are computed by :mod:`scdl.data.planning`;
:mod:`scdl.data.catalog` resolves them before the protocol is built, so the protocol hash always
covers the numbers actually used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal, cast

import numpy as np

from scdl.data.cache import read_index
from scdl.data.errors import ERROR, DataCheckError, Problem
from scdl.data.layouts import RawCase, RawDataset, is_array_case, load_array_case
from scdl.utils.files import TMP_PREFIX, atomic_write
from scdl.utils.parallel import map_cases, workers_for

log = logging.getLogger(__name__)

Normalisation = Literal["window", "zscore", "ct", "none"]
_GRID_FIX = "write the label on the image's grid (same shape and affine)"
# fields added after the first release: left out of the hash while at their default, so caches
# written before they existed stay valid
_OPTIONAL_FIELDS = {"transpose": None, "voxel_spacing": None, "intensity_stats": None}


@dataclass(frozen=True)
class PreprocessProtocol:
    """How raw scans become training arrays.

    Args:
        name: protocol name, also the cache sub-folder (e.g. ``phantom``, ``paper``, ``standard``).
        orientation: axis codes to reorient to (``RAS``), or None to keep the storage order.
        spacing: target voxel spacing in mm (x, y, z), or None to keep the native spacing.
        resize: fixed output shape (x, y, z) applied after resampling (trilinear image, nearest
            label), or None. The AMOS paper protocol stores every case at 160 x 160 x 80.
        clip: HU window [lo, hi] applied before normalisation, or None.
        normalisation: ``window`` maps ``clip`` linearly to [0, 1]; ``zscore`` subtracts the case mean
            and divides by its std (after clipping); ``ct`` is nnU-Net's CT scheme: clip to the
            data set's foreground percentiles and z-score with its foreground mean / std, all four
            taken from ``intensity_stats``; ``none`` keeps the (clipped) values.
        transpose: array inputs only (``.npy`` / ``.h5``): axis permutation applied on load so the
            stored arrays are (x, y, z); ``"auto"`` moves a strictly smallest first axis to the end
            (z-first DHC arrays (80, 160, 160) -> (160, 160, 80)); None keeps the order.
        voxel_spacing: array inputs only: their voxel size in mm, recorded in the case meta (arrays
            carry no affine; they are never resampled). None records 1 mm ("voxel units").
        intensity_stats: ``(lo, hi, mean, std)`` for ``normalisation="ct"``.
    """

    name: str = "standard"
    orientation: str | None = "RAS"
    spacing: tuple[float, float, float] | None = (1.5, 1.5, 2.0)
    resize: tuple[int, int, int] | None = None
    clip: tuple[float, float] | None = (-125.0, 275.0)
    normalisation: Normalisation = "window"
    transpose: tuple[int, int, int] | Literal["auto"] | None = None
    voxel_spacing: tuple[float, float, float] | None = None
    intensity_stats: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        # canonical number types, so that `clip: [-125, 275]` in a config and (-125.0, 275.0) in
        # code give the same hash
        for key, kind in (
            ("spacing", float),
            ("clip", float),
            ("voxel_spacing", float),
            ("intensity_stats", float),
            ("resize", int),
        ):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, tuple(kind(v) for v in value))
        if self.transpose is not None and self.transpose != "auto":
            object.__setattr__(self, "transpose", tuple(int(a) for a in self.transpose))
        if self.normalisation not in ("window", "zscore", "ct", "none"):
            raise ValueError(f"unknown normalisation {self.normalisation!r}")
        if self.normalisation == "window" and self.clip is None:
            raise ValueError("normalisation='window' needs a clip window [lo, hi]")
        if self.normalisation == "ct":
            if self.intensity_stats is None or len(self.intensity_stats) != 4:
                raise ValueError(
                    "normalisation='ct' needs intensity_stats (lo, hi, mean, std); leave them null "
                    "in the config to have them computed from the data set"
                )
            if self.clip is not None:
                raise ValueError(
                    "normalisation='ct' takes its window from intensity_stats: clip=null"
                )
        if self.transpose is not None and self.transpose != "auto":
            if sorted(self.transpose) != [0, 1, 2]:
                raise ValueError(
                    f"transpose must be 'auto' or a permutation of (0, 1, 2), got {self.transpose!r}"
                )

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict; optional fields are left out while at their default."""
        d = asdict(self)
        for key, default in _OPTIONAL_FIELDS.items():
            if d[key] == default:
                d.pop(key)
        return d

    @property
    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=list).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


#: one preprocessing step: (name of a ``monai.transforms`` class, its keyword arguments, JSON-able).
#: The same list builds the transforms here and the bundle's ``configs/inference.json``
#: (:mod:`scdl.inference.bundle`), so an exported model preprocesses as training did.
TransformSpec = tuple[str, dict]


def preprocessing_specs(
    protocol: PreprocessProtocol, labeled: bool, arrays: bool = False, load: bool = True
) -> list[TransformSpec]:
    """The protocol as MONAI steps: NIfTI paths -> (1, X, Y, Z) tensors, or (``arrays``)
    channel-first arrays in. ``load=False`` leaves out the loading steps (:func:`load_specs`)."""
    keys = ["image", "label"] if labeled else ["image"]
    modes = ["bilinear", "nearest"] if labeled else ["bilinear"]
    steps: list[TransformSpec] = []
    if not arrays and load:
        steps += load_specs(labeled)
    steps.append(("EnsureTyped", {"keys": keys, "dtype": "float32", "track_meta": not arrays}))
    if protocol.orientation and not arrays:
        steps.append(("Orientationd", {"keys": keys, "axcodes": protocol.orientation}))
    if protocol.spacing and not arrays:
        steps.append(("Spacingd", {"keys": keys, "pixdim": list(protocol.spacing), "mode": modes}))
    if protocol.resize:
        rmodes = ["trilinear", "nearest-exact"] if labeled else ["trilinear"]
        steps.append(
            ("Resized", {"keys": keys, "spatial_size": list(protocol.resize), "mode": rmodes})
        )
    return steps + intensity_specs(protocol)


def build_transforms(specs: Sequence[TransformSpec]):
    """``monai.transforms.Compose`` of ``specs``."""
    # Imported here: MONAI is slow to import and most callers only need the cache readers.
    from monai import transforms as T

    return T.Compose([getattr(T, name)(**kwargs) for name, kwargs in specs])


def _transforms(
    protocol: PreprocessProtocol, labeled: bool, arrays: bool = False, load: bool = True
):
    """:func:`preprocessing_specs` as one MONAI ``Compose``."""
    return build_transforms(preprocessing_specs(protocol, labeled, arrays, load))


def load_specs(labeled: bool) -> list[TransformSpec]:
    """Read a NIfTI (with its meta) and put its channel first."""
    keys = ["image", "label"] if labeled else ["image"]
    return [
        ("LoadImaged", {"keys": keys, "image_only": False}),
        ("EnsureChannelFirstd", {"keys": keys}),
    ]


def guard_nonfinite(image, case: RawCase, nonfinite: str = "error"):
    """Raises :class:`DataCheckError` naming the case and file when ``image`` (array or tensor) has
    NaN / Inf voxels; with ``nonfinite="repair"`` replaces them in place instead (NaN and -Inf by
    the finite minimum, +Inf by the finite maximum) and logs a warning naming the case."""
    from scdl.data.checks import nonfinite_problem, repair_nonfinite

    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    if array.dtype.kind not in "fc" or np.isfinite(array).all():
        return image
    problem, _ = nonfinite_problem(array, case.case_id, case.image, nonfinite)
    assert problem is not None  # the array has non-finite values
    if problem.is_error:
        raise DataCheckError(str(problem), [problem])
    log.warning("%s", problem)
    array[...] = repair_nonfinite(array)  # shares memory with a (Meta)Tensor's numpy()
    return image


def intensity_specs(protocol: PreprocessProtocol) -> list[TransformSpec]:
    """Clipping and normalisation of the image (after resampling)."""
    steps: list[TransformSpec] = []
    if protocol.normalisation == "ct":
        # resolved from the data before the protocol is built (scdl.data.catalog)
        lo, hi, mean, std = cast(tuple[float, float, float, float], protocol.intensity_stats)
        steps.append(_threshold(lo, above=True))
        steps.append(_threshold(hi, above=False))
        steps.append(
            (
                "NormalizeIntensityd",
                {"keys": "image", "subtrahend": mean, "divisor": max(std, 1e-8)},
            )
        )
        return steps
    if protocol.clip is not None:
        lo, hi = protocol.clip
        if protocol.normalisation == "window":
            window = {"a_min": lo, "a_max": hi, "b_min": 0.0, "b_max": 1.0, "clip": True}
            steps.append(("ScaleIntensityRanged", {"keys": "image", **window}))
        else:
            steps.append(_threshold(lo, above=True))
            steps.append(_threshold(hi, above=False))
    if protocol.normalisation == "zscore":
        steps.append(("NormalizeIntensityd", {"keys": "image"}))
    return steps


def _threshold(value: float, above: bool) -> TransformSpec:
    """Values on the wrong side of ``value`` become ``value`` (a one-sided clip)."""
    return (
        "ThresholdIntensityd",
        {"keys": "image", "threshold": value, "above": above, "cval": value},
    )


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a bare name
            np.save(f, array)

    atomic_write(path, write)


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2)))


def _remove_stale_tmp(cache: Path, max_age_s: float = 86400.0) -> None:
    """Deletes ``.tmp-<pid>@<host>-*`` files left by killed runs: those of this machine whose
    process is gone, and those of other machines older than ``max_age_s`` (a pid means nothing on
    another node of a shared file system, where a live job may be writing)."""
    import time

    from scdl.utils.files import host_tag, tmp_owner

    here = host_tag()
    for tmp in cache.glob(f"{TMP_PREFIX}*"):
        owner = tmp_owner(tmp.name)
        if owner is None:
            continue
        pid, host = owner
        if host is not None and host != here:
            try:
                old = time.time() - tmp.stat().st_mtime > max_age_s
            except OSError:
                continue
            if old:
                tmp.unlink(missing_ok=True)
            continue
        if pid == os.getpid():
            tmp.unlink(missing_ok=True)
            continue
        try:
            os.kill(pid, 0)  # raises if no such process
            continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:  # alive, owned by someone else
            continue
        tmp.unlink(missing_ok=True)


def _file_stamp(path: str | Path, digest: bool = True) -> dict:
    """Size, mtime and (``digest``) blake2b of a raw file: the cache's record of its source."""
    from scdl.data.checks import file_digest

    st = Path(path).stat()
    stamp: dict[str, int | str] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if digest:
        stamp["blake2b"] = file_digest(path)
    return stamp


def source_stamps(case: RawCase) -> dict:
    """``{"image": stamp, "label": stamp | None}`` of a raw case (see :func:`_file_stamp`)."""
    return {
        "image": _file_stamp(case.image),
        "label": _file_stamp(case.label) if case.label is not None else None,
    }


def _same_source(recorded: dict | None, path: Path | None) -> tuple[bool, dict | None]:
    """Whether ``path`` still is the recorded file: same size and mtime, or (mtime changed, e.g.
    after a copy) same content hash; second item: the refreshed stamp when only the mtime moved."""
    if recorded is None or path is None:
        return recorded is None and path is None, None
    try:
        now = _file_stamp(path, digest=False)
    except OSError:
        return False, None
    if now["size"] != recorded.get("size"):
        return False, None
    if now["mtime_ns"] == recorded.get("mtime_ns"):
        return True, None
    if "blake2b" in recorded:
        from scdl.data.checks import file_digest

        if file_digest(path) == recorded["blake2b"]:
            return True, {**recorded, "mtime_ns": now["mtime_ns"]}
    return False, None


def raw_is_unchanged(meta_path: Path, info: dict, case: RawCase) -> bool:
    """True when the raw files of ``case`` are those the cached case was made from (caches written
    before sources were recorded are trusted). A file whose mtime alone moved (same hash) gets its
    new mtime recorded, so it is not hashed again."""
    sources = info.get("sources")
    if sources is None:
        return True
    refreshed = dict(sources)
    for role, path in (("image", case.image), ("label", case.label)):
        same, stamp = _same_source(sources.get(role), None if path is None else Path(path))
        if not same:
            return False
        if stamp is not None:
            refreshed[role] = stamp
    if refreshed != sources:
        _write_json_atomic(meta_path, {**info, "sources": refreshed})
    return True


def case_is_cached(
    cache_dir: Path, case_id: str, protocol_hash: str, raw_case: RawCase | None = None
) -> bool:
    """True when ``case_id`` is complete in the cache under ``protocol_hash`` and (given
    ``raw_case``) its raw files did not change since (:func:`raw_is_unchanged`)."""
    meta = Path(cache_dir) / f"{case_id}.json"
    if not meta.is_file():
        return False
    try:
        info = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False
    complete = info.get("protocol_hash") == protocol_hash and (
        (Path(cache_dir) / f"{case_id}_image.npy").is_file()
        and (not info.get("labeled") or (Path(cache_dir) / f"{case_id}_label.npy").is_file())
    )
    return complete and (raw_case is None or raw_is_unchanged(meta, info, raw_case))


def preprocess_case(
    case: RawCase, protocol: PreprocessProtocol, nonfinite: str = "error"
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Runs the protocol on one raw case; NaN / Inf intensities raise or are repaired
    (``nonfinite``, see :func:`guard_nonfinite`).

    Returns ``(image float32 (X, Y, Z), label (X, Y, Z) uint8 (uint16 for values > 255) or None,
    meta dict)``. An image or label that is not one 3D volume (2D, several channels) raises
    :class:`DataCheckError` naming the file.
    """
    if is_array_case(case):
        return _preprocess_arrays(case, protocol, nonfinite)

    labeled = case.label is not None
    data = {"image": str(case.image)}
    if labeled:
        data["label"] = str(case.label)
    data = build_transforms(load_specs(labeled))(data)
    for role in ("image", "label") if labeled else ("image",):
        _require_one_volume(data[role], case, role)
    data["image"] = guard_nonfinite(data["image"], case, nonfinite)
    if labeled and tuple(data["label"].shape) != tuple(data["image"].shape):
        raise ValueError(
            f"label {case.label} has shape {tuple(data['label'].shape[1:])}, image "
            f"{tuple(data['image'].shape[1:])}: {_GRID_FIX}"
        )
    out = _transforms(protocol, labeled, load=False)(data)
    image = np.ascontiguousarray(out["image"].numpy()[0], dtype=np.float32)
    src_meta = out["image"].meta
    original_affine = np.asarray(src_meta.get("original_affine", src_meta["affine"]))
    meta = {
        "case_id": case.case_id,
        "labeled": labeled,
        "shape": list(image.shape),
        "spacing": [
            float(s) for s in np.sqrt((np.asarray(out["image"].affine)[:3, :3] ** 2).sum(0))
        ],
        "affine": np.asarray(out["image"].affine).tolist(),
        "original_affine": original_affine.tolist(),
        "original_shape": [int(s) for s in src_meta.get("spatial_shape", image.shape)],
        "source_image": str(case.image),
        "source_label": str(case.label) if labeled else None,
        **case.extra,
    }
    label = None
    if labeled:
        label = as_label_array(out["label"].numpy()[0], case)
        if label.shape != image.shape:
            raise ValueError(f"{case.case_id}: label {label.shape} and image {image.shape} differ")
    return image, label, meta


def cache_label_dtype(max_label: int) -> np.dtype:
    """The cache's label type: uint8 up to 255, uint16 up to 65535 (more is refused)."""
    if max_label <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if max_label <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    raise ValueError(f"label value {max_label} > 65535: not supported")


def as_label_array(values: np.ndarray, case: RawCase) -> np.ndarray:
    """Resampled label values -> integer map of :func:`cache_label_dtype` (never wrapped: a cast
    to uint8 would store 259 as 3)."""
    label = np.rint(values)
    lo, hi = (float(label.min()), float(label.max())) if label.size else (0.0, 0.0)
    if lo < 0:
        raise ValueError(f"{case.case_id}: negative label value {lo:g} in {case.label}")
    return label.astype(cache_label_dtype(int(hi)))


def _require_one_volume(tensor, case: RawCase, role: str) -> None:
    """Raises :class:`DataCheckError` naming the file unless ``tensor`` (C, X, Y, Z) is one 3D
    volume (MONAI puts a file's 4th axis first: 2 channels -> C = 2; a 2D file -> 3 axes)."""
    from scdl.data.checks import FIX_SHAPE

    shape = tuple(tensor.shape)
    if len(shape) == 4 and shape[0] == 1:
        return
    path = case.image if role == "image" else case.label
    stored = (*shape[1:], shape[0]) if len(shape) == 4 else shape[1:]
    what = (
        f"{role} holds {shape[0]} channels in one file (shape {stored}); the model takes one, "
        "and only the first would be used"
        if len(shape) == 4
        else f"{role} is not a 3D volume (shape {stored})"
    )
    problem = Problem(ERROR, "shape", what, FIX_SHAPE, case.case_id, path)
    raise DataCheckError(str(problem), [problem])


def resolve_transpose(shape: Sequence[int], transpose) -> tuple[int, int, int]:
    """The axis permutation for ``PreprocessProtocol.transpose`` and an array of ``shape``."""
    if transpose is None:
        return (0, 1, 2)
    if transpose == "auto":
        # z-first arrays (SimpleITK order, e.g. DHC's 80 x 160 x 160): reverse to (x, y, z)
        return (2, 1, 0) if shape[0] < shape[1] and shape[0] < shape[2] else (0, 1, 2)
    return cast(tuple[int, int, int], tuple(int(a) for a in transpose))


def _preprocess_arrays(
    case: RawCase, protocol: PreprocessProtocol, nonfinite: str = "error"
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    if protocol.orientation or protocol.spacing:
        raise ValueError(
            f"{case.case_id}: {Path(case.image).name} is a preprocessed array without an affine; it "
            "cannot be reoriented or resampled. Use a protocol with orientation=null and "
            "spacing=null (data/protocol=legacy_amos or legacy_synapse)"
        )
    image, label = load_array_case(case)
    image = guard_nonfinite(np.asarray(image), case, nonfinite)
    if image.ndim != 3:
        raise ValueError(f"{case.case_id}: image has shape {image.shape}, expected 3 axes")
    if label is not None:
        if label.shape != image.shape:
            raise ValueError(f"{case.case_id}: label {label.shape} and image {image.shape} differ")
        if not np.issubdtype(label.dtype, np.integer) and not np.array_equal(label, np.rint(label)):
            raise ValueError(f"{case.case_id}: label array has non-integer values")
    original_shape = [int(s) for s in image.shape]
    perm = resolve_transpose(image.shape, protocol.transpose)
    data = {"image": np.ascontiguousarray(image.transpose(perm), dtype=np.float32)[None]}
    if label is not None:
        data["label"] = np.ascontiguousarray(label.transpose(perm), dtype=np.float32)[None]
    out = _transforms(protocol, label is not None, arrays=True)(data)
    image_out = np.ascontiguousarray(np.asarray(out["image"])[0], dtype=np.float32)
    label_out = None
    if label is not None:
        label_out = as_label_array(np.asarray(out["label"])[0], case)
    spacing, affine, original_affine = _array_affines(
        original_shape, perm, image_out.shape, protocol.voxel_spacing
    )
    meta = {
        "case_id": case.case_id,
        "labeled": label is not None,
        "shape": list(image_out.shape),
        "spacing": spacing,
        "spacing_known": protocol.voxel_spacing is not None,
        "affine": affine,
        "original_affine": original_affine,
        "original_shape": original_shape,
        "transpose": list(perm),
        "source_image": str(case.image),
        "source_label": str(case.label) if label is not None else None,
        **case.extra,
    }
    return image_out, label_out, meta


def _array_affines(
    original_shape: Sequence[int],
    perm: Sequence[int],
    shape: Sequence[int],
    voxel_spacing: Sequence[float] | None,
) -> tuple[list[float], list, list]:
    """Spacing and voxel -> "world" affines of an array case, so that predictions can be mapped
    back onto the stored array like any NIfTI case (``labels_to_original_grid``).

    The world frame is the cache grid scaled by its spacing. ``voxel_spacing`` is the input
    voxel size along the transposed axes; a resize from the transposed shape ``T`` to ``shape``
    scales it by ``T / shape``. Source voxel ``u`` lands at cache index
    ``c_d = (u[perm[d]] + 0.5) * shape_d / T_d - 0.5`` (pixel-centre resize), hence the affine.
    """
    transposed = [int(original_shape[a]) for a in perm]
    scale = [n / t for n, t in zip(shape, transposed, strict=True)]
    base = voxel_spacing or (1.0, 1.0, 1.0)
    spacing = [float(b) / f for b, f in zip(base, scale, strict=True)]
    original = np.zeros((4, 4))
    original[3, 3] = 1.0
    for d, a in enumerate(perm):
        original[d, a] = spacing[d] * scale[d]
        original[d, 3] = spacing[d] * (0.5 * scale[d] - 0.5)
    return spacing, np.diag([*spacing, 1.0]).tolist(), original.tolist()


def _case_failed(case: RawCase, error: Exception) -> DataCheckError:
    files = " / ".join(str(p) for p in (case.image, case.label) if p is not None)
    problem = Problem(
        ERROR,
        "preprocessing",
        f"preprocessing failed on {files}: {type(error).__name__}: {error}",
        "run `python src/check_data.py data=<name> ...` for a report of every case, then repair "
        "or remove this case",
        case.case_id,
    )
    return DataCheckError(str(problem), [problem])


def _index_case(cache: Path, case: RawCase) -> dict:
    entry = {"case_id": case.case_id, "labeled": case.label is not None, **case.extra}
    if case.label is not None:
        try:
            empty = json.loads((cache / f"{case.case_id}.json").read_text()).get("empty_label")
        except (OSError, json.JSONDecodeError):
            empty = None
        if empty is not None:
            entry["empty_label"] = empty
    return entry


def _prepare_case_into(
    case: RawCase,
    protocol: PreprocessProtocol,
    cache: Path,
    num_classes: int,
    nonfinite: str = "error",
) -> None:
    """Preprocesses one case and writes it to ``cache`` (arrays first, the meta file last, each
    atomically): the unit of work of :func:`prepare_dataset`, in a worker process or not."""
    options = {} if nonfinite == "error" else {"nonfinite": nonfinite}  # default: 2-argument call
    try:
        image, label, meta = preprocess_case(case, protocol, **options)
    except (DataCheckError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - re-raised naming the case and its files
        raise _case_failed(case, e) from e
    if label is not None and label.max() >= num_classes:
        raise ValueError(
            f"{case.case_id}: label value {int(label.max())} >= {num_classes} classes "
            f"({case.label})"
        )
    meta["protocol_hash"] = protocol.hash
    meta["sources"] = source_stamps(case)
    if label is not None:
        meta["empty_label"] = not bool(label.any())
    _save_npy_atomic(cache / f"{case.case_id}_image.npy", image)
    if label is not None:
        _save_npy_atomic(cache / f"{case.case_id}_label.npy", label)
    _write_json_atomic(cache / f"{case.case_id}.json", meta)  # last: marks the case complete


def prepare_dataset(
    raw: RawDataset,
    protocol: PreprocessProtocol,
    cache_dir: str | Path,
    progress: bool = True,
    case_ids: Sequence[str] | None = None,
    index_extra: dict | None = None,
    check: bool = True,
    nonfinite: str = "error",
    implausible_spacing: str = "error",
    workers: int = 1,
) -> Path:
    """Preprocesses every case of ``raw`` (or only ``case_ids``) into ``cache_dir``; idempotent.

    Returns the cache folder. Cases already cached under the same protocol hash, from unchanged raw
    files (size + mtime, else content hash; :func:`case_is_cached`), are skipped. With ``check``,
    every case to be written is validated first (:func:`scdl.data.checks.check_cases`): any error
    raises :class:`DataCheckError` before anything is written. ``nonfinite`` (``error`` | ``repair``)
    treats NaN / Inf intensities, ``implausible_spacing`` (``error`` | ``warn``) voxel sizes outside
    the plausible range. ``index_extra`` adds keys to ``index.json`` (the catalog stores the
    unresolved config's hash). ``workers`` > 1 checks and preprocesses that many cases at once
    (processes of one thread each; the cache is byte-identical to the serial pass's).
    """
    from scdl.data.checks import check_cases, find_duplicates

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(cache)
    wanted = None if case_ids is None else set(case_ids)
    cases = [c for c in raw.cases if wanted is None or c.case_id in wanted]
    todo = [c for c in cases if not case_is_cached(cache, c.case_id, protocol.hash, c)]
    if check and todo:
        report = check_cases(raw, todo, nonfinite, progress, implausible_spacing, workers)
        # repaired intensities are reported by the preprocessing itself (once)
        report.problems = [p for p in report.problems if p.is_error or p.check != "non-finite"]
        report.raise_on_errors(f"{raw.name}: ")
        duplicates = report.duplicates
    else:
        reuse = not todo and (cache / "index.json").is_file()  # nothing changed: keep the record
        old = read_index(cache).get("duplicates") if reuse else None
        duplicates = old if old is not None else find_duplicates(raw.cases)
    work = partial(
        _prepare_case_into,
        protocol=protocol,
        cache=cache,
        num_classes=raw.num_classes,
        nonfinite=nonfinite,
    )
    workers = workers_for([c.image for c in todo], workers)
    map_cases(work, todo, workers, f"preprocess {raw.name} ({protocol.name})", progress)
    ids = {c.case_id for c in cases}
    _write_json_atomic(
        cache / "index.json",
        {
            "name": raw.name,
            "class_names": raw.class_names,
            "protocol": protocol.to_dict(),
            "protocol_hash": protocol.hash,
            **(index_extra or {}),
            "duplicates": [g for g in duplicates if sum(i in ids for i in g) > 1],
            "cases": [_index_case(cache, c) for c in cases],
        },
    )
    return cache
