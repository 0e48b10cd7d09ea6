"""Preprocessing: decode each NIfTI once, reorient, resample, window and normalise with MONAI
transforms, and write a memory-mappable cache that training reads instead of NIfTI.

Cache layout (``cache_dir``)::

    index.json               class names, protocol, its hash, the case list
    <case>_image.npy         float32 (X, Y, Z), RAS orientation
    <case>_label.npy         uint8   (X, Y, Z)   (absent for unlabeled cases)
    <case>.json              meta: shapes, spacing, original affine/shape, protocol hash, extra flags

A case is trusted only when its ``<case>.json`` exists and carries the current protocol hash; the
meta file is written last, by atomic rename, so an interrupted run never leaves a half-written case
that a later run believes (it is simply redone). Re-running with the same protocol is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from scdl.data.layouts import RawCase, RawDataset
from scdl.utils.progress import progress_iter

Normalisation = Literal["window", "zscore", "none"]


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
            and divides by its std (after clipping); ``none`` keeps the (clipped) values.
    """

    name: str = "standard"
    orientation: str | None = "RAS"
    spacing: tuple[float, float, float] | None = (1.5, 1.5, 2.0)
    resize: tuple[int, int, int] | None = None
    clip: tuple[float, float] | None = (-125.0, 275.0)
    normalisation: Normalisation = "window"

    def __post_init__(self) -> None:
        if self.normalisation not in ("window", "zscore", "none"):
            raise ValueError(f"unknown normalisation {self.normalisation!r}")
        if self.normalisation == "window" and self.clip is None:
            raise ValueError("normalisation='window' needs a clip window [lo, hi]")

    @property
    def hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=list).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


def _transforms(protocol: PreprocessProtocol, labeled: bool):
    # Imported here: MONAI is slow to import and most callers only need the cache readers.
    from monai import transforms as T

    keys = ["image", "label"] if labeled else ["image"]
    modes = ("bilinear", "nearest") if labeled else ("bilinear",)
    steps: list = [
        T.LoadImaged(keys, image_only=False),
        T.EnsureChannelFirstd(keys),
        T.EnsureTyped(keys, dtype=np.float32),
    ]
    if protocol.orientation:
        steps.append(T.Orientationd(keys, axcodes=protocol.orientation))
    if protocol.spacing:
        steps.append(T.Spacingd(keys, pixdim=protocol.spacing, mode=modes))
    if protocol.resize:
        rmodes = ("trilinear", "nearest") if labeled else ("trilinear",)
        steps.append(T.Resized(keys, spatial_size=protocol.resize, mode=rmodes))
    if protocol.clip is not None:
        lo, hi = protocol.clip
        if protocol.normalisation == "window":
            steps.append(T.ScaleIntensityRanged("image", lo, hi, 0.0, 1.0, clip=True))
        else:
            steps.append(T.ThresholdIntensityd("image", threshold=lo, above=True, cval=lo))
            steps.append(T.ThresholdIntensityd("image", threshold=hi, above=False, cval=hi))
    if protocol.normalisation == "zscore":
        steps.append(T.NormalizeIntensityd("image"))
    return T.Compose(steps)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def case_is_cached(cache_dir: Path, case_id: str, protocol_hash: str) -> bool:
    meta = cache_dir / f"{case_id}.json"
    if not meta.is_file():
        return False
    try:
        info = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False
    return info.get("protocol_hash") == protocol_hash and (
        (cache_dir / f"{case_id}_image.npy").is_file()
        and (not info.get("labeled") or (cache_dir / f"{case_id}_label.npy").is_file())
    )


def preprocess_case(
    case: RawCase, protocol: PreprocessProtocol
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Runs the protocol on one raw case.

    Returns ``(image float32 (X, Y, Z), label uint8 (X, Y, Z) or None, meta dict)``.
    """
    labeled = case.label is not None
    data = {"image": str(case.image)}
    if labeled:
        data["label"] = str(case.label)
    out = _transforms(protocol, labeled)(data)
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
        raw = out["label"].numpy()[0]
        label = np.rint(raw).astype(np.uint8)
        if label.shape != image.shape:
            raise ValueError(f"{case.case_id}: label {label.shape} and image {image.shape} differ")
    return image, label, meta


def prepare_dataset(
    raw: RawDataset,
    protocol: PreprocessProtocol,
    cache_dir: str | Path,
    progress: bool = True,
    case_ids: Sequence[str] | None = None,
) -> Path:
    """Preprocesses every case of ``raw`` (or only ``case_ids``) into ``cache_dir``; idempotent.

    Returns the cache folder. Cases already cached under the same protocol hash are skipped.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    cases = [c for c in raw.cases if case_ids is None or c.case_id in set(case_ids)]
    todo = [c for c in cases if not case_is_cached(cache, c.case_id, protocol.hash)]
    for case in progress_iter(
        todo, f"preprocess {raw.name} ({protocol.name})", progress and bool(todo)
    ):
        image, label, meta = preprocess_case(case, protocol)
        if label is not None and label.max() >= raw.num_classes:
            raise ValueError(
                f"{case.case_id}: label value {int(label.max())} >= {raw.num_classes} classes"
            )
        meta["protocol_hash"] = protocol.hash
        _save_npy_atomic(cache / f"{case.case_id}_image.npy", image)
        if label is not None:
            _save_npy_atomic(cache / f"{case.case_id}_label.npy", label)
        _write_json_atomic(cache / f"{case.case_id}.json", meta)  # last: marks the case complete
    _write_json_atomic(
        cache / "index.json",
        {
            "name": raw.name,
            "class_names": raw.class_names,
            "protocol": asdict(protocol),
            "protocol_hash": protocol.hash,
            "cases": [
                {"case_id": c.case_id, "labeled": c.label is not None, **c.extra} for c in cases
            ],
        },
    )
    return cache


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
    mode = None if in_memory else "r"
    image = np.load(cache / f"{case_id}_image.npy", mmap_mode=mode)
    label_path = cache / f"{case_id}_label.npy"
    label = np.load(label_path, mmap_mode=mode) if label_path.is_file() else None
    return CachedCase(case_id, image, label, meta)
