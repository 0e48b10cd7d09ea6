"""Data checks: find what would silently corrupt or later break training, before anything is
written, and name the file and the fix of each finding.

Per case (:func:`check_case`):

- unreadable or truncated files (a ``.nii.gz`` whose gzip trailer disagrees with its header is
  decompressed in full to confirm; other files fail on the read itself);
- image / label shape, spacing, orientation, direction and origin (beyond :data:`SPACING_RTOL`,
  :data:`DIRECTION_ATOL`, :data:`ORIGIN_ATOL_MM`), read from the NIfTI headers only;
- shape: one 3D volume per file (2D files and several channels in one file are errors; trailing
  axes of size 1 are accepted and squeezed);
- implausible spacing: non-positive or non-finite is an error, and so is a size outside
  [:data:`MIN_SPACING_MM`, :data:`MAX_SPACING_MM`] (an affine in metres) unless
  ``data.implausible_spacing=warn``;
- label values outside the class map (``0..C-1``), non-integer label values, all-background labels;
- non-finite image intensities (NaN / Inf; an error unless ``nonfinite="repair"``). Images stored
  as integers cannot hold them and are not decoded: only labels and float images are read in full.

Per data set (:func:`check_raw`): ``dataset.json`` (malformed JSON, no ``labels``: raised by the
readers as :class:`~scdl.data.errors.DataCheckError`, reported here), duplicate ids, and
byte-identical files under different ids (:func:`find_duplicates`: grouped by size, then by a
blake2b hash of the first MiB, then of the whole file, so only real candidates are read).

Per split (:func:`check_split`): split ids without files, all-background labels in the labeled part
(error) or in val/test (warning), byte-identical cases in different parts (error: the test result
would be contaminated).

``python src/check_data.py data=...`` runs everything (:func:`scdl.data.catalog.check_from_config`) and prints a
summary table; :func:`scdl.data.prepare.prepare_dataset` runs the per-case checks on every case it
is about to write before writing any, and the data module runs :func:`check_split` on the facts the
cache index keeps (``empty_label``, ``duplicates``). ``data.check=false`` skips them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from scdl.data.errors import ERROR, WARNING, DataCheckError, Problem
from scdl.data.layouts import (
    RawCase,
    RawDataset,
    is_array_case,
    load_array_case,
    load_dataset_json,
)
from scdl.utils.parallel import map_cases, workers_for

log = logging.getLogger(__name__)

SPACING_RTOL = 1e-3  # relative difference of image and label voxel sizes
DIRECTION_ATOL = 1e-3  # difference of the unit axis directions
ORIGIN_ATOL_MM = 0.05  # origin difference, in mm ...
ORIGIN_ATOL_VOXELS = 0.05  # ... or in voxels of the finest axis, whichever is larger
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 20.0
NONFINITE_MODES = ("error", "repair")
SPACING_MODES = ("error", "warn")  # data.implausible_spacing
_CHUNK = 1 << 20

FIX_REEXPORT = "re-download or re-export this file (it cannot be decoded)"
FIX_GRID = (
    "write the label on the image's grid: same shape and affine as the image (if the voxels are "
    "aligned and only the header is wrong: nib.save(nib.Nifti1Image(label_array, image.affine), "
    "label_path))"
)
FIX_NONFINITE = (
    "repair or re-export the image, or set data.nonfinite=repair (NaN and -Inf become the image's "
    "finite minimum, +Inf its finite maximum)"
)


@dataclass
class CaseFacts:
    """What the checks learnt about a case besides its problems."""

    case_id: str
    empty_label: bool | None = None
    nonfinite: int = 0


@dataclass
class CheckReport:
    """Problems found and the number of cases looked at."""

    name: str
    problems: list[Problem] = field(default_factory=list)
    cases_checked: int = 0
    facts: dict[str, CaseFacts] = field(default_factory=dict)
    duplicates: list[list[str]] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if not p.is_error]

    def raise_on_errors(self, context: str = "", footer: str | None = None) -> None:
        """Logs the warnings; raises :class:`DataCheckError` listing the errors, if any."""
        for p in self.warnings:
            log.warning("%s", p)
        if self.errors:
            raise DataCheckError.from_problems(self.problems, context, footer)

    def table(self) -> str:
        """The plain-text summary: one row per check category."""
        rows: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        for p in self.problems:
            rows[p.check][0 if p.is_error else 1] += 1
        width = max([len("check")] + [len(k) for k in rows])
        lines = [f"{'check':<{width}}  errors  warnings", f"{'-' * width}  ------  --------"]
        lines += [f"{k:<{width}}  {e:>6}  {w:>8}" for k, (e, w) in sorted(rows.items())]
        total_e, total_w = len(self.errors), len(self.warnings)
        lines.append(f"{'total':<{width}}  {total_e:>6}  {total_w:>8}")
        return "\n".join(lines)

    def print(self) -> None:
        """Every problem, then the summary table (rich when available)."""
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:  # pragma: no cover - rich is a dependency
            for p in self.problems:
                print(f"{p.severity.upper()} {p}")
            print(self.table())
            return
        console = Console(soft_wrap=True)
        for p in self.problems:
            style = "bold red" if p.is_error else "yellow"
            console.print(f"[{style}]{p.severity.upper()}[/] {p}", markup=True, highlight=False)
        table = Table(title=f"check_data {self.name}: {self.cases_checked} case(s)")
        table.add_column("check")
        table.add_column("errors", justify="right")
        table.add_column("warnings", justify="right")
        rows: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        for p in self.problems:
            rows[p.check][0 if p.is_error else 1] += 1
        for k, (e, w) in sorted(rows.items()):
            table.add_row(k, str(e), str(w))
        table.add_row("total", str(len(self.errors)), str(len(self.warnings)), style="bold")
        console.print(table)
        verdict = "FAILED" if self.errors else "passed"
        console.print(
            f"{verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)",
            style="bold red" if self.errors else "bold green",
        )


# --- file-level helpers ----------------------------------------------------------------------


def is_nifti(path: Path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _gzip_problem(path: Path, expected: int) -> str | None:
    """None when the gzip file holds ``expected`` bytes; else what is wrong. The trailer's size
    (mod 2**32) is compared first; only a mismatch decompresses the file (multi-member files)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:
            return "truncated (shorter than a gzip header)"
        f.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", f.read(4))
        if isize == expected % 2**32:
            return None
        f.seek(0)
        total, d = 0, zlib.decompressobj(zlib.MAX_WBITS | 16)
        try:
            while chunk := f.read(_CHUNK):
                while chunk:
                    total += len(d.decompress(chunk))
                    chunk = d.unused_data
                    if chunk:  # next gzip member
                        d = zlib.decompressobj(zlib.MAX_WBITS | 16)
        except zlib.error as e:
            return f"corrupt gzip stream ({e})"
    if not d.eof:
        of = f" of {expected}" if expected >= 0 else ""
        return f"truncated: the gzip stream ends after {total}{of} bytes"
    if total < expected:
        return f"truncated: {total} bytes of data, the header needs {expected}"
    return None


def _nifti_problem(path: Path, img) -> str | None:
    """Truncation of a NIfTI file, from its header and size (gzip: its trailer) alone."""
    proxy = img.dataobj
    expected = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
    if str(path).lower().endswith(".gz"):
        return _gzip_problem(path, expected)
    size = path.stat().st_size
    return f"truncated: {size} bytes, the header needs {expected}" if size < expected else None


def _load_nifti(path: Path, role: str, case_id: str, problems: list[Problem]):
    """The header-only nibabel image, or None (and a problem) when it cannot be read."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        problem = _nifti_problem(path, img)
    except Exception as e:  # noqa: BLE001 - any reader failure is reported with the file
        img = None
        gz = str(path).lower().endswith(".gz") and _gzip_problem(path, -1)
        cause = gz if gz and gz.startswith(("truncated", "corrupt")) else f"unreadable {role}"
        problem = f"{cause} ({type(e).__name__}: {e})"
    if problem:
        problems.append(Problem(ERROR, "unreadable", problem, FIX_REEXPORT, case_id, path))
        return None
    return img


def _read_array(img, path: Path, role: str, case_id: str, problems: list[Problem]):
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # noqa: BLE001
        problems.append(
            Problem(
                ERROR,
                "unreadable",
                f"{role} data cannot be decoded ({type(e).__name__}: {e})",
                FIX_REEXPORT,
                case_id,
                path,
            )
        )
        return None


def _zooms(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def spacing_problems(img, path: Path, case_id: str, implausible: str = "error") -> list[Problem]:
    """Non-positive / non-finite voxel sizes (error) and sizes outside the plausible range (an
    error, a warning with ``implausible="warn"``: ``data.implausible_spacing``)."""
    zooms = np.concatenate([_zooms(img.affine), np.asarray(img.header.get_zooms()[:3], float)])
    fix = (
        "correct pixdim / the affine of this file (spacing is in mm; check xyzt_units, a file "
        "written in metres or with a zero pixdim is a common cause)"
    )
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        return [
            Problem(
                ERROR,
                "spacing",
                f"non-positive voxel size {_fmt(zooms[:3])} mm",
                fix,
                case_id,
                path,
            )
        ]
    if np.any(zooms < MIN_SPACING_MM) or np.any(zooms > MAX_SPACING_MM):
        metres = np.all(zooms[:3] < MIN_SPACING_MM) and np.all(zooms[:3] * 1000 >= MIN_SPACING_MM)
        hint = (
            " (an affine in metres? the scan would be resampled to a few voxels)" if metres else ""
        )
        return [
            Problem(
                ERROR if implausible == "error" else WARNING,
                "spacing",
                f"implausible voxel size {_fmt(zooms[:3])} mm (expected {MIN_SPACING_MM}-"
                f"{MAX_SPACING_MM} mm){hint}",
                fix + "; data.implausible_spacing=warn accepts it if it is intended",
                case_id,
                path,
            )
        ]
    return []


def array_shape_problem(shape: Sequence[int], role: str) -> str | None:
    """Why a stored ``shape`` is not one 3D volume, or None. Trailing axes of size 1
    (``(X, Y, Z, 1)``, written by some exporters) are accepted: readers squeeze them
    (:func:`squeeze_to_3d`)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        return f"{role} is {len(shape)}D (shape {shape}): this project segments 3D volumes"
    extra = shape[3:]
    if any(s != 1 for s in extra):
        n = int(np.prod(extra))
        what = "channels or time points" if role == "image" else "volumes"
        return (
            f"{role} holds {n} {what} in one file (shape {shape}); the data set has one channel"
            " and only the first would be used"
        )
    return None


def squeeze_to_3d(array: np.ndarray) -> np.ndarray:
    """``array`` without trailing axes of size 1 beyond the third (``(X, Y, Z, 1)`` -> 3D)."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


FIX_SHAPE = (
    "store one 3D volume per file; nnU-Net keeps each channel in its own file (<case>_0000, "
    "_0001, ...), and this project trains on one channel: save the channel the model uses as a 3D "
    "file (e.g. nib.save(nib.Nifti1Image(data[..., 0], img.affine), path))"
)


def geometry_problems(img, lab, case: RawCase) -> list[Problem]:
    """Image and label must share shape and affine (spacing, orientation, direction, origin)."""
    import nibabel as nib

    a, b = np.asarray(img.affine, float), np.asarray(lab.affine, float)
    za, zb = _zooms(a), _zooms(b)
    diffs = []
    if tuple(img.shape[:3]) != tuple(lab.shape[:3]):
        diffs.append(f"shape {tuple(lab.shape)} vs image {tuple(img.shape)}")
    if not np.allclose(za, zb, rtol=SPACING_RTOL, atol=0):
        diffs.append(f"spacing {_fmt(zb)} vs image {_fmt(za)} mm")
    codes_a, codes_b = nib.aff2axcodes(a), nib.aff2axcodes(b)
    if codes_a != codes_b:
        diffs.append(
            f"orientation {''.join(codes_b)} vs image {''.join(codes_a)} (an axis is flipped or "
            "swapped: the label would be mirrored)"
        )
    elif np.all(za > 0) and np.all(zb > 0):
        if not np.allclose(a[:3, :3] / za, b[:3, :3] / zb, atol=DIRECTION_ATOL, rtol=0):
            diffs.append("direction cosines differ (rotated axes)")
        shift = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
        if shift > max(ORIGIN_ATOL_MM, ORIGIN_ATOL_VOXELS * float(za.min())):
            diffs.append(f"origin differs by {shift:.3g} mm")
    if not diffs:
        return []
    check = "shape" if "shape" in diffs[0] else "geometry"
    return [
        Problem(
            ERROR,
            check,
            f"label does not match image {case.image}: " + "; ".join(diffs),
            FIX_GRID,
            case.case_id,
            case.label,
        )
    ]


def label_value_problems(
    label: np.ndarray, num_classes: int, case_id: str, path
) -> tuple[list[Problem], bool]:
    """Non-integer / non-finite labels and values outside ``0..num_classes-1``; also whether the
    label is all background."""
    problems = []
    label = np.asarray(label)
    if label.dtype.kind == "f":
        finite = np.isfinite(label)
        if not finite.all():
            problems.append(
                Problem(
                    ERROR,
                    "label values",
                    f"{int((~finite).sum())} non-finite label voxel(s)",
                    "re-export the label with integer class ids",
                    case_id,
                    path,
                )
            )
            label = np.where(finite, label, 0)
        if not np.array_equal(label, np.rint(label)):
            problems.append(
                Problem(
                    ERROR,
                    "label values",
                    "non-integer label values (an interpolated label?)",
                    "re-export the label with integer class ids (nearest-neighbour resampling)",
                    case_id,
                    path,
                )
            )
            label = np.rint(label)
    lo, hi = (label.min(), label.max()) if label.size else (0, 0)
    if lo < 0 or hi >= num_classes:
        bad = np.unique(label[(label < 0) | (label >= num_classes)])
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        problems.append(
            Problem(
                ERROR,
                "label values",
                f"label value(s) {shown} outside the class map 0..{num_classes - 1} "
                f"({num_classes} classes)",
                "correct the label file, or add the missing classes to the class map "
                "(dataset.json 'labels')",
                case_id,
                path,
            )
        )
    return problems, bool(hi == 0 and lo == 0)


def nonfinite_problem(
    image: np.ndarray, case_id: str, path, nonfinite: str = "error"
) -> tuple[Problem | None, int]:
    """A problem (error, or warning under ``nonfinite="repair"``) for NaN / Inf intensities."""
    image = np.asarray(image)
    if image.dtype.kind not in "fc":
        return None, 0
    bad = ~np.isfinite(image)
    count = int(bad.sum())
    if not count:
        return None, 0
    nan = int(np.isnan(image).sum())
    what = f"{count} non-finite voxel(s) (NaN: {nan}, Inf: {count - nan}) of {image.size}"
    if bad.all():
        return Problem(
            ERROR, "non-finite", f"{what}: no finite value", FIX_REEXPORT, case_id, path
        ), count
    if nonfinite == "repair":
        return (
            Problem(
                WARNING,
                "non-finite",
                f"{what}: replaced (NaN, -Inf -> finite minimum, +Inf -> finite maximum)",
                "repair the image file to silence this warning",
                case_id,
                path,
            ),
            count,
        )
    return Problem(ERROR, "non-finite", what, FIX_NONFINITE, case_id, path), count


def repair_nonfinite(image: np.ndarray) -> np.ndarray:
    """NaN and -Inf -> the finite minimum, +Inf -> the finite maximum (the documented repair)."""
    finite = np.isfinite(image)
    lo, hi = image[finite].min(), image[finite].max()
    out = np.where(np.isposinf(image), hi, image)
    return np.where(np.isfinite(out), out, lo).astype(image.dtype, copy=False)


# --- one case --------------------------------------------------------------------------------


def check_case(
    case: RawCase, num_classes: int, nonfinite: str = "error", implausible_spacing: str = "error"
) -> tuple[list[Problem], CaseFacts]:
    """Every per-case check (see the module docstring); headers first, arrays only as needed."""
    if is_array_case(case):
        return _check_array_case(case, num_classes, nonfinite)
    problems: list[Problem] = []
    facts = CaseFacts(case.case_id)
    if not is_nifti(Path(case.image)):
        return problems, facts  # other formats (.mha, .nrrd): only the preprocessing read checks
    img = _load_nifti(Path(case.image), "image", case.case_id, problems)
    if img is not None and _shape_problem(img, "image", case, problems):
        img = None  # 2D or several channels: no further check is meaningful
    if img is not None:
        problems += spacing_problems(img, Path(case.image), case.case_id, implausible_spacing)
        dtype = img.dataobj.dtype
        if np.dtype(dtype).kind in "fc":  # integer storage cannot hold NaN / Inf
            array = _read_array(img, Path(case.image), "image", case.case_id, problems)
            if array is not None:
                problem, facts.nonfinite = nonfinite_problem(
                    array, case.case_id, case.image, nonfinite
                )
                problems += [problem] if problem else []
    if case.label is None:
        return problems, facts
    lab = _load_nifti(Path(case.label), "label", case.case_id, problems)
    if lab is None or _shape_problem(lab, "label", case, problems):
        return problems, facts
    if img is not None:
        problems += geometry_problems(img, lab, case)
    label = _read_array(lab, Path(case.label), "label", case.case_id, problems)
    if label is not None:
        label = squeeze_to_3d(label)
        found, facts.empty_label = label_value_problems(
            label, num_classes, case.case_id, case.label
        )
        problems += found
    return problems, facts


def _shape_problem(img, role: str, case: RawCase, problems: list[Problem]) -> bool:
    """Adds a problem (and returns True) when a NIfTI's shape is not one 3D volume."""
    message = array_shape_problem(img.shape, role)
    if message is not None:
        path = case.image if role == "image" else case.label
        problems.append(Problem(ERROR, "shape", message, FIX_SHAPE, case.case_id, path))
    return message is not None


def _check_array_case(
    case: RawCase, num_classes: int, nonfinite: str
) -> tuple[list[Problem], CaseFacts]:
    facts = CaseFacts(case.case_id)
    try:
        image, label = load_array_case(case)
    except Exception as e:  # noqa: BLE001
        unreadable = Problem(
            ERROR,
            "unreadable",
            f"cannot be read ({type(e).__name__}: {e})",
            FIX_REEXPORT,
            case.case_id,
            case.image,
        )
        return [unreadable], facts
    problems: list[Problem] = []
    if image.ndim != 3:
        problems.append(
            Problem(
                ERROR,
                "shape",
                f"image has shape {image.shape}, expected 3 axes",
                "store one 3D volume per case",
                case.case_id,
                case.image,
            )
        )
    problem, facts.nonfinite = nonfinite_problem(image, case.case_id, case.image, nonfinite)
    problems += [problem] if problem else []
    if label is not None:
        if label.shape != image.shape:
            problems.append(
                Problem(
                    ERROR,
                    "shape",
                    f"label shape {label.shape} differs from image shape {image.shape}",
                    "store the label on the image's grid",
                    case.case_id,
                    case.label,
                )
            )
        found, facts.empty_label = label_value_problems(
            label, num_classes, case.case_id, case.label
        )
        problems += found
    return problems, facts


# --- the data set ----------------------------------------------------------------------------


def _digest(path: Path, limit: int | None = None) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        read = 0
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            read += len(chunk)
            if limit is not None and read >= limit:
                break
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """blake2b (128 bit) of a file's bytes."""
    return _digest(Path(path))


def find_duplicates(cases: Sequence[RawCase]) -> list[list[str]]:
    """Groups (sorted case ids) of cases whose image files are byte-identical. Only files of equal
    size are hashed, first their first MiB, then in full."""
    by_size: dict[int, list[RawCase]] = defaultdict(list)
    for c in cases:
        try:
            by_size[Path(c.image).stat().st_size].append(c)
        except OSError:
            continue
    groups: list[list[str]] = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_head: dict[str, list[RawCase]] = defaultdict(list)
        for c in same_size:
            by_head[_digest(Path(c.image), _CHUNK)].append(c)
        for same_head in by_head.values():
            if len(same_head) < 2:
                continue
            by_full: dict[str, list[str]] = defaultdict(list)
            for c in same_head:
                key = _digest(Path(c.image)) if len(same_head) > 1 else ""
                by_full[key].append(c.case_id)
            groups += [sorted(ids) for ids in by_full.values() if len(ids) > 1]
    return sorted(groups)


def duplicate_problems(groups: Sequence[Sequence[str]], raw: RawDataset) -> list[Problem]:
    """One warning per group of byte-identical cases (an error only across split parts)."""
    paths = {c.case_id: c.image for c in raw.cases}
    return [
        Problem(
            WARNING,
            "duplicate",
            f"image is a byte-identical copy of {', '.join(repr(i) for i in ids[1:])} "
            f"({', '.join(str(paths[i]) for i in ids[1:])})",
            "delete the copy from the raw data set (or keep all copies in one split part)",
            ids[0],
            paths[ids[0]],
        )
        for ids in groups
    ]


def check_cases(
    raw: RawDataset,
    cases: Sequence[RawCase] | None = None,
    nonfinite: str = "error",
    progress: bool = True,
    implausible_spacing: str = "error",
    workers: int = 1,
) -> CheckReport:
    """Runs :func:`check_case` on ``cases`` (default all; ``workers`` at once) and the duplicate
    check on all cases; the reader's own findings (:attr:`RawDataset.problems`) come first."""
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"data.nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    if implausible_spacing not in SPACING_MODES:
        raise ValueError(
            f"data.implausible_spacing must be one of {SPACING_MODES}, got {implausible_spacing!r}"
        )
    cases = list(raw.cases if cases is None else cases)
    report = CheckReport(raw.name, list(raw.problems), cases_checked=len(cases))
    check = partial(
        check_case,
        num_classes=raw.num_classes,
        nonfinite=nonfinite,
        implausible_spacing=implausible_spacing,
    )
    workers = workers_for([c.image for c in cases], workers)
    found = map_cases(check, cases, workers, f"check {raw.name}", progress and len(cases) > 1)
    for case, (problems, facts) in zip(cases, found, strict=True):
        report.problems += problems
        report.facts[case.case_id] = facts
    report.duplicates = find_duplicates(raw.cases)
    report.problems += duplicate_problems(report.duplicates, raw)
    for case in cases:
        if report.facts[case.case_id].empty_label:
            report.problems.append(
                Problem(
                    WARNING,
                    "empty label",
                    "label is all background (an error if the case is in the labeled part of "
                    "the split)",
                    "check the label file; move the case to the unlabeled part if it has no "
                    "annotation",
                    case.case_id,
                    case.label,
                )
            )
    return report


# --- the split -------------------------------------------------------------------------------


def check_split(
    split,
    available: Iterable[str],
    empty_label: Iterable[str] = (),
    duplicates: Sequence[Sequence[str]] = (),
    source: str = "split",
) -> list[Problem]:
    """Split ids without a case, all-background labeled cases, duplicates across parts."""
    from scdl.data.splits import PARTS

    problems = []
    avail, empty = set(available), set(empty_label)
    part_of = {i: p for p in PARTS for i in getattr(split, p)}
    for part in PARTS:
        for i in getattr(split, part):
            if i not in avail:
                problems.append(
                    Problem(
                        ERROR,
                        "split",
                        f"'{part}' lists case {i!r}, which has no files in the data set",
                        "add the case's files to the raw data set or remove the id from the "
                        "split (is data.root the right data set?)",
                        i,
                        source,
                    )
                )
            elif i in empty:
                severity = ERROR if part == "labeled" else WARNING
                problems.append(
                    Problem(
                        severity,
                        "empty label",
                        f"all-background label in the '{part}' part of the split",
                        "fix the label file, or move the case to the unlabeled part "
                        "(data.check=false trains anyway)",
                        i,
                        source,
                    )
                )
    train = {"labeled", "unlabeled"}
    for ids in duplicates:
        parts = {part_of[i] for i in ids if i in part_of}
        if len(parts) > 1 and not parts <= train:
            where = ", ".join(f"{i!r} ({part_of[i]})" for i in ids if i in part_of)
            problems.append(
                Problem(
                    ERROR,
                    "duplicate",
                    f"byte-identical cases in different split parts: {where}; the evaluation "
                    "would score a case seen in training",
                    "delete the copy from the raw data set, or put all copies in the same part",
                    ids[0],
                    source,
                )
            )
    return problems


def index_split_problems(split, index: dict, source: str = "split") -> list[Problem]:
    """:func:`check_split` on the facts a cache index keeps (cheap: no volume is read)."""
    cases = index.get("cases", [])
    return check_split(
        split,
        [c["case_id"] for c in cases],
        [c["case_id"] for c in cases if c.get("empty_label")],
        index.get("duplicates", []),
        source,
    )


# --- from a data config (check_data.py) ------------------------------------------------------


def dataset_json_problems(raw: RawDataset, raw_dir: Path) -> list[Problem]:
    """Incomplete nnU-Net ``dataset.json`` (the readers raise on malformed ones)."""
    path = Path(raw_dir) / "dataset.json"
    if raw.meta.get("layout") != "nnunet" or not path.is_file():
        return []
    meta = load_dataset_json(path)
    problems = []
    if "channel_names" not in meta and "modality" not in meta:
        problems.append(
            Problem(
                WARNING,
                "dataset.json",
                "no 'channel_names': the channel is taken to be CT (CT window / normalisation)",
                'add "channel_names": {"0": "CT"} (or the MR sequence name)',
                path=path,
            )
        )
    labeled = sum(c.label is not None for c in raw.cases)
    if "numTraining" in meta and meta["numTraining"] != labeled:
        problems.append(
            Problem(
                WARNING,
                "dataset.json",
                f"numTraining is {meta['numTraining']} but imagesTr has {labeled} labeled case(s)",
                "correct numTraining, or look for missing imagesTr / labelsTr files",
                path=path,
            )
        )
    return problems
