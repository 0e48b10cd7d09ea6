"""Readers of raw data-set layouts: each lists the cases (image and label paths) and the class names.

Every reader returns a :class:`RawDataset`; preprocessing (:mod:`scdl.data.prepare`) takes it from there
and never looks at the layout again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RawCase:
    """One case of a raw data set. ``label`` is None for unlabeled scans; ``extra`` holds flags
    such as ``{"modality": "MRI"}``."""

    case_id: str
    image: Path
    label: Path | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RawDataset:
    """Cases plus class names (index = label id, 0 = background)."""

    name: str
    cases: list[RawCase]
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def class_names_from_labels(labels: dict) -> list[str]:
    """Class names ordered by id from a ``dataset.json`` ``labels`` map.

    Accepts both nnU-Net v2 (``{"background": 0, "liver": 1}``) and MSD/v1 style
    (``{"0": "background", "1": "liver"}``); ids must be 0..C-1 without gaps.
    """
    if all(str(k).lstrip("-").isdigit() for k in labels):
        by_id = {int(k): str(v) for k, v in labels.items()}
    else:
        by_id = {}
        for name, value in labels.items():
            if not isinstance(value, int):
                raise ValueError(
                    f"label {name!r} maps to {value!r}: region-based labels are not supported"
                )
            by_id[value] = str(name)
    ids = sorted(by_id)
    if ids != list(range(len(ids))):
        raise ValueError(f"label ids must be consecutive from 0, got {ids}")
    return [by_id[i] for i in ids]


def read_nnunet_raw(root: str | Path, name: str | None = None) -> RawDataset:
    """nnU-Net v2 raw layout: ``imagesTr/<case>_0000<ext>``, ``labelsTr/<case><ext>``, ``dataset.json``.

    Cases in ``imagesTs`` (if any) are listed as unlabeled.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no dataset.json in {root}: not an nnU-Net raw data set")
    meta = json.loads(meta_path.read_text())
    ext = meta.get("file_ending", ".nii.gz")
    class_names = class_names_from_labels(meta["labels"])
    if len(meta.get("channel_names", {"0": "CT"})) != 1:
        raise ValueError(f"{root}: only single-channel data sets are supported")
    cases: list[RawCase] = []
    for folder, label_folder in (("imagesTr", "labelsTr"), ("imagesTs", None)):
        for img in sorted((root / folder).glob(f"*_0000{ext}")):
            cid = img.name[: -len(f"_0000{ext}")]
            label = root / label_folder / f"{cid}{ext}" if label_folder else None
            if label is not None and not label.is_file():
                raise FileNotFoundError(f"image {img} has no label {label}")
            cases.append(RawCase(cid, img, label))
    if not cases:
        raise FileNotFoundError(f"no images matching imagesTr/*_0000{ext} in {root}")
    return RawDataset(name or meta.get("name", root.name), cases, class_names)
