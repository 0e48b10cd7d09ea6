"""Tiny synthetic data sets in every raw layout the project ingests (AMOS22, BTCV, nnU-Net v2,
DHC/GALoss AMOS npy, MagicNet/GALoss Synapse h5). Each case is a small CT-like volume: a soft-tissue
body with a few box-shaped "organs" of constant HU, so tests can check that labels stay aligned with
the image after resampling (the image inside organ k keeps organ k's intensity)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

#: HU of the body and of organs 1.. (distinct, inside the [-125, 275] window)
BODY_HU = 0.0
ORGAN_HU = (60.0, 120.0, 180.0, 240.0)
AIR_HU = -1000.0
#: voxel spacing (mm) of the NIfTI fixtures and an affine that is not RAS (x and y flipped = LPS)
SPACING = (1.2, 1.2, 2.5)
LPS_AFFINE = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])

AMOS_LABELS = {
    "0": "background",
    "1": "spleen",
    "2": "right kidney",
    "3": "left kidney",
    "4": "gallbladder",
    "5": "esophagus",
    "6": "liver",
    "7": "stomach",
    "8": "aorta",
    "9": "postcava",
    "10": "pancreas",
    "11": "right adrenal gland",
    "12": "left adrenal gland",
    "13": "duodenum",
    "14": "bladder",
    "15": "prostate/uterus",
}


def phantom_volume(
    shape: Sequence[int], seed: int, num_organs: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32 HU, label uint8)`` of ``shape`` (x, y, z): air, a body box and
    ``num_organs`` boxes (labels 1..num_organs) at seed-dependent positions."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    image = np.full(shape, AIR_HU, np.float32)
    label = np.zeros(shape, np.uint8)
    body = tuple(slice(max(1, s // 10), s - max(1, s // 10)) for s in shape)
    image[body] = BODY_HU
    for k in range(1, num_organs + 1):
        size = [max(3, s // 4) for s in shape]
        lo = [int(rng.integers(b.start, b.stop - sz)) for b, sz in zip(body, size, strict=True)]
        box = tuple(slice(a, a + sz) for a, sz in zip(lo, size, strict=True))
        image[box] = ORGAN_HU[k - 1]
        label[box] = k
    return image, label


def _save(array: np.ndarray, path: Path, affine: np.ndarray = LPS_AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def write_amos22(
    root: Path,
    tr: Sequence[int] = (1, 2, 3, 4, 5, 507),
    va: Sequence[int] = (540,),
    ts: Sequence[int] = (601,),
    shape: Sequence[int] = (24, 24, 12),
    num_organs: int = 3,
) -> Path:
    """``root/amos22`` as downloaded (dataset.json with id -> name labels, imagesTr/labelsTr,
    imagesVa/labelsVa, imagesTs). Ids above 500 are the MRI cases."""
    out = root / "amos22"
    meta = {"name": "AMOS", "labels": AMOS_LABELS, "licence": "CC-BY-SA", "numTraining": len(tr)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.json").write_text(json.dumps(meta))
    for ids, img_dir, lab_dir in ((tr, "imagesTr", "labelsTr"), (va, "imagesVa", "labelsVa")):
        for i in ids:
            image, label = phantom_volume(shape, i, num_organs)
            _save(image.astype(np.int16), out / img_dir / f"amos_{i:04d}.nii.gz")
            _save(label, out / lab_dir / f"amos_{i:04d}.nii.gz")
    for i in ts:
        image, _ = phantom_volume(shape, i, num_organs)
        _save(image.astype(np.int16), out / "imagesTs" / f"amos_{i:04d}.nii.gz")
    return out


def write_btcv(
    root: Path,
    training: Sequence[int] = (1, 2, 3, 4, 5, 6),
    testing: Sequence[int] = (61,),
    shape: Sequence[int] = (24, 24, 12),
    num_organs: int = 3,
) -> Path:
    """``root/RawData/{Training/img,Training/label,Testing/img}`` as in BTCV's RawData.zip."""
    out = root / "RawData"
    for i in training:
        image, label = phantom_volume(shape, i, num_organs)
        _save(image.astype(np.int16), out / "Training" / "img" / f"img{i:04d}.nii.gz")
        _save(label, out / "Training" / "label" / f"label{i:04d}.nii.gz")
    for i in testing:
        image, _ = phantom_volume(shape, i, num_organs)
        _save(image.astype(np.int16), out / "Testing" / "img" / f"img{i:04d}.nii.gz")
    return out


def write_nnunet(
    root: Path,
    num_cases: int = 6,
    num_test: int = 1,
    shape: Sequence[int] = (24, 24, 12),
    channel: str = "CT",
    class_names: Sequence[str] = ("background", "Left Lobe", "right-lobe"),
    spacings: Sequence[Sequence[float]] | None = None,
) -> Path:
    """``root/Dataset123_Tiny`` in the nnU-Net v2 raw layout (labels: name -> id)."""
    out = root / "Dataset123_Tiny"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "channel_names": {"0": channel},
        "labels": {n: i for i, n in enumerate(class_names)},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        "name": "Tiny",
    }
    (out / "dataset.json").write_text(json.dumps(meta))
    for i in range(num_cases + num_test):
        image, label = phantom_volume(shape, 100 + i, len(class_names) - 1)
        sp = spacings[i % len(spacings)] if spacings else SPACING
        affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])
        if i < num_cases:
            _save(image.astype(np.int16), out / "imagesTr" / f"tiny_{i:03d}_0000.nii.gz", affine)
            _save(label, out / "labelsTr" / f"tiny_{i:03d}.nii.gz", affine)
        else:
            _save(image.astype(np.int16), out / "imagesTs" / f"tiny_{i:03d}_0000.nii.gz", affine)
    return out


def write_amos_npy(
    root: Path, ids: Sequence[int] = (1, 2, 507), shape_zyx: Sequence[int] = (12, 24, 20)
) -> Path:
    """DHC-style preprocessed AMOS: z-first float32 HU images and float32 labels (DHC saves the
    label after ``F.interpolate``, hence float), ``amos_XXXX_{image,label}.npy``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in ids:
        image, label = phantom_volume(tuple(reversed(shape_zyx)), i)
        np.save(root / f"amos_{i:04d}_image.npy", image.transpose(2, 1, 0).astype(np.float32))
        np.save(root / f"amos_{i:04d}_label.npy", label.transpose(2, 1, 0).astype(np.float32))
    return root


def write_synapse_h5(
    root: Path, ids: Sequence[int] = (1, 2, 3), shape: Sequence[int] = (24, 20, 12)
) -> Path:
    """MagicNet/GALoss-style Synapse: ``XXXX.h5`` with z-scored float32 ``image`` (x, y, z) and
    uint8 ``label``; the last id has no label."""
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(ids):
        image, label = phantom_volume(shape, i)
        image = (image - image.mean()) / image.std()
        with h5py.File(root / f"{i:04d}.h5", "w") as f:
            f.create_dataset("image", data=image.astype(np.float32))
            if n < len(ids) - 1:
                f.create_dataset("label", data=label)
    return root


def write_split(path: Path, labeled, unlabeled, val, test) -> Path:
    path.write_text(
        json.dumps({"labeled": labeled, "unlabeled": unlabeled, "val": val, "test": test})
    )
    return path
