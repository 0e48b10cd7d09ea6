"""Readers of raw data-set layouts: each lists the cases (image and label paths) and the class names.

Every reader returns a :class:`RawDataset`; preprocessing (:mod:`scdl.data.prepare`) takes it from there
and never looks at the layout again. Readers only list files (and read ``dataset.json`` or HDF5 keys);
no volume is decoded here.

Layouts (``data.layout``; exact folder trees in ``docs/real-data.md``):

- ``nnunet`` / ``phantom``: nnU-Net v2 raw (:func:`read_nnunet_raw`).
- ``amos``: the AMOS22 download (:func:`read_amos22`); cases above ``amos_0500`` are MRI, flagged
  ``extra={"modality": "MRI"}`` so that ``data.module.exclude`` can drop them.
- ``btcv``: the Synapse / BTCV ``RawData`` download (:func:`read_btcv`), case ids ``0001``...
- ``amos_npy``, ``synapse_h5``: the already preprocessed arrays of the DHC / GALoss / SCDL code
  bases (:func:`read_amos_npy`, :func:`read_synapse_h5`); their ``RawCase.image`` is an ``.npy`` or
  ``.h5`` file, which :mod:`scdl.data.prepare` copies instead of resampling.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scdl.data.errors import ERROR, WARNING, DataCheckError, Problem
from scdl.data.labels import AMOS_CLASSES, SYNAPSE_CLASSES, clean_class_names
from scdl.utils.files import repeated

log = logging.getLogger(__name__)

#: layouts whose cases are preprocessed arrays (no affine): only array-friendly protocols apply
ARRAY_LAYOUTS = ("amos_npy", "synapse_h5")
#: AMOS22 case numbers above this are MRI scans (AMOS22 id ranges; nnU-Net's Dataset218 filter)
AMOS_LAST_CT_ID = 500


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
    #: data-set level facts, e.g. ``{"channel": "CT", "layout": "amos"}``
    meta: dict = field(default_factory=dict)
    #: what the reader found but did not use (warnings: stray files; errors are raised)
    problems: list[Problem] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labeled(self) -> list[RawCase]:
        return [c for c in self.cases if c.label is not None]


#: files operating systems leave in folders: never data, never reported
SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "ehthumbs.db"})
#: endings of files that look like scans (a skipped one is an error, never a silent drop)
SCAN_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".npy", ".h5", ".dcm")


def load_dataset_json(path: str | Path, require: Sequence[str] = ("labels",)) -> dict:
    """Reads a ``dataset.json``; raises :class:`DataCheckError` naming the file, the key and the fix
    when it is not valid JSON, not an object or lacks a ``require``-d key."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problem = Problem(
            ERROR,
            "dataset.json",
            f"not valid JSON ({e})",
            "repair the file (e.g. `python -m json.tool dataset.json` shows the position) or "
            "restore it from the download",
            path=path,
        )
        raise DataCheckError(str(problem), [problem]) from e
    if not isinstance(meta, dict):
        problem = Problem(
            ERROR, "dataset.json", "is not a JSON object", "restore it from the download", path=path
        )
        raise DataCheckError(str(problem), [problem])
    for key in require:
        if key not in meta:
            problem = Problem(
                ERROR,
                "dataset.json",
                f"has no {key!r} key (keys: {sorted(meta)})",
                f'add "{key}", e.g. "labels": {{"background": 0, "liver": 1}} (nnU-Net v2) or '
                '{"0": "background", "1": "liver"}',
                path=path,
            )
            raise DataCheckError(str(problem), [problem])
    return meta


def looks_like_scan(path: Path) -> bool:
    return path.name.lower().endswith(SCAN_ENDINGS)


def unused_files(folder: Path, used: set[Path], explain=None) -> list[Problem]:
    """Every entry of ``folder`` a reader did not use, as a problem: a scan-like file is an error
    (``explain(path)`` -> ``(message, fix)`` says why it was not read), macOS ``._*`` files and
    other files or folders are warnings; hidden files and :data:`SYSTEM_FILES` are ignored."""
    if not folder.is_dir():
        return []
    problems = []
    for path in sorted(folder.iterdir()):
        if path in used or path.name in SYSTEM_FILES:
            continue
        if path.name.startswith("._"):
            problems.append(
                Problem(
                    WARNING,
                    "stray file",
                    "macOS AppleDouble file (metadata written when copying from a Mac), not a "
                    "scan: ignored",
                    f"delete these files: find '{folder.parent}' -name '._*' -delete (the "
                    "download is not damaged)",
                    path=path,
                )
            )
        elif path.name.startswith("."):
            continue
        elif path.is_file() and looks_like_scan(path):
            message, fix = (explain or _not_in_layout)(path)
            problems.append(Problem(ERROR, "unused file", message, fix, path=path))
        else:
            what = "folder" if path.is_dir() else "file"
            problems.append(
                Problem(
                    WARNING,
                    "unused file",
                    f"{what} not read (not part of the layout)",
                    "move it out of the data set folder to silence this warning",
                    path=path,
                )
            )
    return problems


def _not_in_layout(path: Path) -> tuple[str, str]:
    return (
        "scan-like file that the layout's file names do not match: not read",
        "rename it as the layout expects (docs/real-data.md) or move it out of the data set",
    )


def _raise_or_keep(problems: list[Problem], root: Path) -> list[Problem]:
    """Raises :class:`DataCheckError` when ``problems`` hold an error; else returns the warnings
    (for :attr:`RawDataset.problems`: the data checks report them)."""
    if any(p.is_error for p in problems):
        raise DataCheckError.from_problems(
            problems,
            f"{root}: ",
            "Every file under the image and label folders is either used or reported; nothing "
            "was written. Full report: `python src/check_data.py data=<name> ...`.",
        )
    return problems


def _check_unique(cases: list[RawCase], root: Path) -> None:
    ids = [c.case_id for c in cases]
    dup = repeated(ids)
    if dup:
        problems = [
            Problem(
                ERROR,
                "duplicate id",
                "case id listed twice: "
                + ", ".join(str(c.image) for c in cases if c.case_id == case_id),
                "rename or remove one of the files (case ids must be unique)",
                case_id,
                root,
            )
            for case_id in dup
        ]
        raise DataCheckError.from_problems(problems, f"{root}: ")


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


def _class_names(meta: dict, path: Path) -> list[str]:
    """Cleaned class names of a ``dataset.json``; a bad ``labels`` map raises :class:`DataCheckError`
    naming the file."""
    try:
        if not isinstance(meta["labels"], dict) or not meta["labels"]:
            raise ValueError(f"'labels' must be a non-empty map, got {meta['labels']!r}")
        return clean_class_names(class_names_from_labels(meta["labels"]), "'labels'")
    except ValueError as e:
        problem = Problem(
            ERROR,
            "dataset.json",
            f"bad 'labels' map: {e}",
            "give every class one distinct name and one integer id, 0..C-1 without gaps, e.g. "
            '{"background": 0, "liver": 1}',
            path=path,
        )
        raise DataCheckError(str(problem), [problem]) from e


def read_nnunet_raw(
    root: str | Path, name: str | None = None, include_test: bool = True
) -> RawDataset:
    """nnU-Net v2 raw layout: ``imagesTr/<case>_0000<ext>``, ``labelsTr/<case><ext>``, ``dataset.json``.

    Cases in ``imagesTs`` (if any, and ``include_test``) are listed as unlabeled. Class names come
    from ``labels`` (cleaned by :func:`scdl.data.labels.clean_class_names`), the channel name
    (``CT`` or not, which picks the ``auto`` normalisation) from ``channel_names``. Every file in
    the folders read is used or reported (:func:`unused_files`): a skipped scan-like file (another
    ending, a channel suffix other than ``_0000``, a label without image) is an error.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no dataset.json in {root}: not an nnU-Net raw data set")
    meta = load_dataset_json(meta_path)
    ext = meta.get("file_ending", ".nii.gz")
    class_names = _class_names(meta, meta_path)
    channels = meta.get("channel_names", meta.get("modality", {"0": "CT"}))
    if len(channels) != 1:
        raise ValueError(f"{root}: only single-channel data sets are supported")
    cases: list[RawCase] = []
    problems: list[Problem] = []
    used: set[Path] = set()
    folders = [("imagesTr", "labelsTr")] + ([("imagesTs", None)] if include_test else [])
    for folder, label_folder in folders:
        for img in sorted((root / folder).glob(f"*_0000{ext}")):
            if img.name.startswith("."):  # macOS ._* files: reported by unused_files
                continue
            cid = img.name[: -len(f"_0000{ext}")]
            label = root / label_folder / f"{cid}{ext}" if label_folder else None
            used.add(img)
            if label is not None and not label.is_file():
                problems.append(
                    Problem(
                        ERROR,
                        "missing label",
                        f"image has no label {label}",
                        f"add {label.name} to {label_folder}/, or move the image to imagesTs/ "
                        "(unlabeled)",
                        cid,
                        img,
                    )
                )
                continue
            used.update([label] if label is not None else [])
            cases.append(RawCase(cid, img, label))
        explain = _nnunet_explainer(root / folder, ext)
        problems += unused_files(root / folder, used, explain)
        if label_folder:
            problems += unused_files(root / label_folder, used, _orphan_label(root, folder, ext))
    problems = _raise_or_keep(problems, root)
    if not cases:
        raise FileNotFoundError(f"no images matching imagesTr/*_0000{ext} in {root}")
    _check_unique(cases, root)
    channel = str(next(iter(channels.values())))
    return RawDataset(
        name or meta.get("name", root.name),
        cases,
        class_names,
        {"channel": channel, "layout": "nnunet"},
        problems,
    )


def _nnunet_explainer(folder: Path, ext: str):
    """Why a scan-like file of an nnU-Net image folder was not read, and the fix."""

    def explain(path: Path) -> tuple[str, str]:
        name = path.name
        for other in (".nii.gz", ".nii", ".mha", ".nrrd"):
            if name.endswith(other) and other != ext:
                want = name[: -len(other)] + ext
                return (
                    f"ends in {other} but dataset.json file_ending is {ext}: not read",
                    f"save it as {want} (every file of a data set has the same ending)",
                )
        stem = name[: -len(ext)] if name.endswith(ext) else name
        if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
            case, channel = stem[:-5], stem[-4:]
            if (folder / f"{case}_0000{ext}").is_file():
                return (
                    f"channel file _{channel} of case {case!r}, but dataset.json declares one "
                    "channel (channel_names): not read",
                    "remove the extra channel files (this project trains on one channel), or "
                    "declare and train a multi-channel data set elsewhere",
                )
            return (
                f"case {case!r} has channel _{channel} but no channel _0000: not read",
                f"rename it to {case}_0000{ext} if it is the case's only channel",
            )
        return (
            f"no channel suffix: nnU-Net images are named <case>_0000{ext}: not read",
            f"rename it to {stem}_0000{ext}",
        )

    return explain


def _orphan_label(root: Path, image_folder: str, ext: str):
    def explain(path: Path) -> tuple[str, str]:
        stem = path.name[: -len(ext)] if path.name.endswith(ext) else path.name
        image = root / image_folder / f"{stem}_0000{ext}"
        unread = sorted(p.name for p in (root / image_folder).glob(f"{stem}_*"))
        if unread and path.name.endswith(ext):
            return (
                f"its image was not read ({', '.join(unread)}; see the error for that file)",
                f"rename the image to {image.name}",
            )
        if not path.name.endswith(ext):
            return (
                f"label file not ending in {ext} (dataset.json file_ending): not read",
                f"save it as {stem}{ext}",
            )
        return (
            f"label without an image ({image} is missing): not read",
            f"add the image {image.name} to {image_folder}/, or remove the label",
        )

    return explain


# --- AMOS22 ----------------------------------------------------------------------------------


def case_number(case_id: str) -> int | None:
    """Trailing number of a case id (``amos_0507`` -> 507), or None."""
    m = re.search(r"(\d+)$", case_id)
    return int(m.group(1)) if m else None


def amos_modality(case_id: str) -> str:
    """``"MRI"`` for AMOS22 case numbers above 500, else ``"CT"`` (AMOS22 id ranges)."""
    number = case_number(case_id)
    return "MRI" if number is not None and number > AMOS_LAST_CT_ID else "CT"


def _find_dir_with(root: Path, marker: str, candidates: tuple[str, ...]) -> Path:
    for sub in candidates:
        if (root / sub / marker).exists():
            return root / sub
    tried = ", ".join(str(root / sub / marker) for sub in candidates)
    raise FileNotFoundError(f"{root} does not look like the expected download: none of {tried}")


def read_amos22(root: str | Path, include_test: bool = False) -> RawDataset:
    """The AMOS22 download (zenodo 7262581, ``amos22.zip``), ``root`` = ``amos22/`` or its parent.

    Layout: ``dataset.json`` (``labels``: id -> name), ``imagesTr/amos_XXXX.nii.gz`` +
    ``labelsTr/`` (every training image must have its label), ``imagesVa/`` + ``labelsVa/``
    (validation; labeled when ``labelsVa/amos_XXXX.nii.gz`` exists, unlabeled otherwise: the
    first releases had no validation labels) and ``imagesTs/`` (no labels; listed only with
    ``include_test``, as unlabeled cases).

    Every case gets ``extra = {"modality": "CT"|"MRI", "subset": "Tr"|"Va"|"Ts"}``.
    """
    root = _find_dir_with(Path(root), "dataset.json", (".", "amos22"))
    meta = load_dataset_json(root / "dataset.json")
    class_names = _class_names(meta, root / "dataset.json")
    subsets: list[tuple[str, str, str | None]] = [
        ("Tr", "imagesTr", "labelsTr"),
        ("Va", "imagesVa", "labelsVa"),
    ]
    if include_test:
        subsets.append(("Ts", "imagesTs", None))
    cases: list[RawCase] = []
    problems: list[Problem] = []
    used: set[Path] = set()
    unlabeled_va = 0
    for subset, img_dir, lab_dir in subsets:
        for img in sorted((root / img_dir).glob("*.nii.gz")):
            if img.name.startswith("."):
                continue
            cid = img.name[: -len(".nii.gz")]
            label = root / lab_dir / img.name if lab_dir else None
            used.add(img)
            if label is not None and not label.is_file():
                if subset == "Tr":
                    problems.append(_missing_label(cid, img, label))
                    continue
                label, unlabeled_va = None, unlabeled_va + 1
            used.update([label] if label is not None else [])
            extra = {"modality": amos_modality(cid), "subset": subset}
            cases.append(RawCase(cid, img, label, extra))
        problems += unused_files(root / img_dir, used)
        if lab_dir:
            problems += unused_files(root / lab_dir, used, _label_without_image(root / img_dir))
    problems = _raise_or_keep(problems, root)
    if unlabeled_va:
        log.warning(
            "%s: %d imagesVa case(s) without labelsVa: listed as unlabeled", root, unlabeled_va
        )
    if not any(c.extra["subset"] == "Tr" for c in cases):
        raise FileNotFoundError(f"no images in {root / 'imagesTr'}: not the AMOS22 download")
    _check_unique(cases, root)
    return RawDataset("amos", cases, class_names, {"channel": "CT", "layout": "amos"}, problems)


def _missing_label(case_id: str, image: Path, label: Path) -> Problem:
    return Problem(
        ERROR,
        "missing label",
        f"training image has no label {label}",
        f"add {label.name} to {label.parent.name}/, or remove the image",
        case_id,
        image,
    )


def _label_without_image(image_folder: Path, image_name=lambda label: label.name):
    def explain(path: Path) -> tuple[str, str]:
        image = image_folder / image_name(path)
        return (
            f"label without an image ({image} is missing) or not named like one: not read",
            f"add the image {image.name} to {image_folder.name}/, or remove the label",
        )

    return explain


# --- Synapse / BTCV --------------------------------------------------------------------------


def read_btcv(root: str | Path, include_test: bool = False) -> RawDataset:
    """The Synapse / BTCV download (synapse.org syn3193805, ``Abdomen/RawData.zip``).

    ``root`` may be the folder holding ``RawData/``, ``RawData/`` itself or ``RawData/Training``:
    ``Training/img/img0001.nii.gz`` + ``Training/label/label0001.nii.gz`` (30 labeled cases,
    0001-0010 and 0021-0040) and ``Testing/img/img0061.nii.gz`` (20 unlabeled; listed only with
    ``include_test``). The MSD-style re-packaging ``imagesTr/img0001.nii.gz`` +
    ``labelsTr/label0001.nii.gz`` (MONAI tutorials) is accepted as well. Case ids are the four
    digits (``0001``), as in the split lists; 13 organs + background in the Synapse order.
    """
    root = Path(root)
    train = (
        _find_dir_with(
            root, "img", ("RawData/Training", "Training", ".", "Abdomen/RawData/Training")
        )
        if not (root / "imagesTr").is_dir()
        else None
    )
    if train is not None:
        img_dir, lab_dir = train / "img", train / "label"
        test_dir = train.parent / "Testing" / "img"
    else:
        img_dir, lab_dir, test_dir = root / "imagesTr", root / "labelsTr", root / "imagesTs"
    cases: list[RawCase] = []
    problems: list[Problem] = []
    used: set[Path] = set()
    folders = [(img_dir, lab_dir, "Tr")] + ([(test_dir, None, "Ts")] if include_test else [])
    for images, labels, subset in folders:
        for img in sorted(images.glob("img*.nii.gz")):
            cid = img.name[len("img") : -len(".nii.gz")]
            label = labels / f"label{cid}.nii.gz" if labels is not None else None
            used.add(img)
            if label is not None and not label.is_file():
                problems.append(_missing_label(cid, img, label))
                continue
            used.update([label] if label is not None else [])
            cases.append(RawCase(cid, img, label, {"modality": "CT", "subset": subset}))
        problems += unused_files(images, used)
        if labels is not None:
            to_image = lambda p: "img" + p.name.removeprefix("label")  # noqa: E731
            problems += unused_files(labels, used, _label_without_image(images, to_image))
    problems = _raise_or_keep(problems, root)
    if not cases:
        raise FileNotFoundError(f"no img*.nii.gz in {img_dir}: not the BTCV RawData download")
    _check_unique(cases, root)
    return RawDataset(
        "synapse", cases, list(SYNAPSE_CLASSES), {"channel": "CT", "layout": "btcv"}, problems
    )


# --- preprocessed arrays of the reference code bases -----------------------------------------


def read_amos_npy(root: str | Path) -> RawDataset:
    """DHC / GALoss / SCDL preprocessed AMOS: ``<id>_image.npy`` (+ ``<id>_label.npy``) in one
    folder, ids like ``amos_0001``. The arrays are HU values resized to 80 x 160 x 160 (z, y, x) by
    DHC (GALoss copies may be (x, y, z)); see the ``legacy`` protocol for the transposition."""
    root = Path(root)
    cases = []
    for img in sorted(root.glob("*_image.npy")):
        cid = img.name[: -len("_image.npy")]
        label = root / f"{cid}_label.npy"
        cases.append(
            RawCase(
                cid,
                img,
                label if label.is_file() else None,
                {"modality": amos_modality(cid), "subset": "npy"},
            )
        )
    if not cases:
        raise FileNotFoundError(f"no *_image.npy in {root}: not a preprocessed AMOS folder")
    return RawDataset("amos", cases, list(AMOS_CLASSES), {"channel": "CT", "layout": "amos_npy"})


def read_synapse_h5(root: str | Path) -> RawDataset:
    """MagicNet / GALoss / SCDL preprocessed Synapse: one ``<id>.h5`` per case (``0001.h5``) with
    datasets ``image`` (float, z-scored at 1.5 x 1.5 x 2 mm, (x, y, z)) and ``label``.
    ``RawCase.image`` and ``RawCase.label`` both point at the ``.h5`` file."""
    import h5py

    root = Path(root)
    cases = []
    for path in sorted(root.glob("*.h5")):
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise ValueError(f"{path} has no 'image' dataset (keys: {sorted(f.keys())})")
            has_label = "label" in f
        cases.append(RawCase(path.stem, path, path if has_label else None, {"modality": "CT"}))
    if not cases:
        raise FileNotFoundError(f"no *.h5 in {root}: not a preprocessed Synapse folder")
    return RawDataset(
        "synapse", cases, list(SYNAPSE_CLASSES), {"channel": "CT", "layout": "synapse_h5"}
    )


# ----------------------------------------------------------------------------------------------
# Array cases (the reference code bases' preprocessed .npy / .h5)
# ----------------------------------------------------------------------------------------------

ARRAY_SUFFIXES = (".npy", ".h5", ".hdf5")


def is_array_case(case: RawCase) -> bool:
    """True for the preprocessed ``.npy`` / ``.h5`` cases of the reference code bases."""
    return Path(case.image).suffix.lower() in ARRAY_SUFFIXES


def load_array_case(case: RawCase) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw arrays of an array case, as stored: ``<id>_image.npy`` / ``<id>_label.npy`` or the
    ``image`` / ``label`` datasets of an HDF5 file."""
    if Path(case.image).suffix.lower() == ".npy":
        image = np.load(case.image)
        label = np.load(case.label) if case.label is not None else None
        return image, label
    import h5py

    with h5py.File(case.image, "r") as f:
        image = f["image"][()]
    label = None
    if case.label is not None:
        with h5py.File(case.label, "r") as f:
            label = f["label"][()]
    return image, label
