"""A data-set reader written the way docs/extending.md "Extending" describes: one function, selected with
``data.layout=custom_layout.read_flat_folder`` (used by tests/test_extending.py)."""

from __future__ import annotations

from pathlib import Path

from scdl.data.layouts import RawCase, RawDataset


def read_flat_folder(
    raw_dir: Path, classes: tuple[str, ...] = ("background", "organ")
) -> RawDataset:
    """``<raw_dir>/<id>_img.nii.gz`` with an optional ``<id>_seg.nii.gz`` label beside it."""
    cases = []
    for image in sorted(Path(raw_dir).glob("*_img.nii.gz")):
        case_id = image.name[: -len("_img.nii.gz")]
        label = image.with_name(f"{case_id}_seg.nii.gz")
        cases.append(RawCase(case_id, image, label if label.is_file() else None))
    return RawDataset("flat", cases, list(classes), {"channel": "CT"})
