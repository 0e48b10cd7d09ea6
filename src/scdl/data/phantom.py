"""A procedural abdominal CT phantom with the 13 Synapse organs, written as an nnU-Net raw data set.

Why a phantom: the project must train and be tested on a laptop with no data. The phantom keeps what
makes the real problem hard for SCDL:

* **class imbalance** of realistic proportions: the liver is several hundred times an adrenal gland,
  the veins and the esophagus are thin tubes, the stomach and the liver dominate the foreground;
* **overlapping intensities**: liver, spleen, pancreas, adrenals, bowel and muscle share the
  40-65 HU soft-tissue range, so texture and position, not thresholds, must separate them;
* **noise and partial volume**: Gaussian noise, low-frequency texture and a blur of the edges;
* **per-case anatomical variation**: global body scale, organ position/size jitter, a smooth random
  deformation field, contrast-phase offsets of the vessels and random bowel gas.

Geometry is defined in world millimetres, RAS+ (+x towards the patient's right, +y anterior,
+z superior), centred in the body. Each case is sampled on a grid with its own voxel spacing and
stored with an LPS-like affine ``diag(-sx, -sy, sz)`` (as most DICOM-to-NIfTI converters write CT:
array index i grows towards the patient's left, j towards posterior), so preprocessing must
reorient to RAS.

Output (nnU-Net v2 raw layout): ``imagesTr/<case>_0000.nii.gz`` (int16 HU), ``labelsTr/<case>.nii.gz``
(uint8), ``dataset.json`` with ``channel_names`` and ``labels`` (name -> id).

CLI: ``python -m scdl.data.phantom --out data/phantom/raw --cases 30 --seed 0``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from scdl.data.labels import SYNAPSE_CLASSES
from scdl.utils.files import atomic_write
from scdl.utils.progress import progress_iter

LABEL = {name: i for i, name in enumerate(SYNAPSE_CLASSES)}

#: World field of view (mm) of every case: after resampling to 1.5 x 1.5 x 2.0 mm this is ~96 x 96 x 64.
FOV_MM = (144.0, 144.0, 128.0)


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid: centre and semi-axes in mm (RAS)."""

    center: tuple[float, float, float]
    axes: tuple[float, float, float]


@dataclass(frozen=True)
class Tube:
    """A tube of constant radius (mm) around a polyline of RAS points (mm)."""

    points: tuple[tuple[float, float, float], ...]
    radius: float


# Organ shapes of a reference anatomy (RAS mm; body centre at the origin). Roughly 0.4 x adult size so
# that the body fits the 144 mm field of view. Painted in this order: later entries overwrite earlier.
ANATOMY: list[tuple[str, list[Ellipsoid | Tube]]] = [
    ("liver", [Ellipsoid((30, 4, 24), (30, 25, 27)), Ellipsoid((4, 17, 30), (18, 10, 13))]),
    ("stomach", [Ellipsoid((-24, 14, 24), (17, 13, 19))]),
    ("spleen", [Ellipsoid((-42, -16, 22), (10, 15, 17))]),
    ("right_kidney", [Ellipsoid((25, -26, -6), (9, 8, 18))]),
    ("left_kidney", [Ellipsoid((-25, -26, -3), (9, 8, 18))]),
    ("pancreas", [Ellipsoid((-8, -2, 2), (24, 5.5, 6)), Ellipsoid((12, 0, 0), (8, 6, 7))]),
    ("aorta", [Tube(((-5, -20, 64), (-5, -19, 0), (-4, -16, -64)), 4.5)]),
    ("inferior_vena_cava", [Tube(((13, -16, 50), (13, -17, 0), (12, -15, -64)), 4.0)]),
    (
        "portal_splenic_veins",
        [Tube(((17, 3, 14), (3, -3, 9), (-18, -11, 13), (-34, -14, 18)), 2.3)],
    ),
    ("gallbladder", [Ellipsoid((19, 23, 4), (5, 6, 10))]),
    ("esophagus", [Tube(((-3, -12, 64), (-6, -6, 42), (-13, 4, 32)), 3.2)]),
    ("right_adrenal_gland", [Ellipsoid((16, -22, 18), (3.3, 2.8, 5.5))]),
    ("left_adrenal_gland", [Ellipsoid((-16, -22, 19), (3.3, 2.8, 5.5))]),
]

# Mean HU of each tissue and the per-case jitter (std) of that mean. Soft tissues overlap on purpose.
TISSUE_HU: dict[str, tuple[float, float]] = {
    "air": (-1000, 0),
    "fat": (-100, 10),
    "muscle": (50, 5),
    "bowel": (35, 8),
    "gas": (-850, 50),
    "bone": (550, 60),
    "liver": (60, 10),
    "spleen": (55, 10),
    "right_kidney": (150, 25),
    "left_kidney": (150, 25),
    "gallbladder": (15, 6),
    "esophagus": (45, 8),
    "stomach": (25, 10),
    "aorta": (190, 40),
    "inferior_vena_cava": (135, 30),
    "portal_splenic_veins": (150, 30),
    "pancreas": (48, 8),
    "right_adrenal_gland": (42, 8),
    "left_adrenal_gland": (42, 8),
}


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) from points (N, 3) to the segment a-b."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def _inside(shape: Ellipsoid | Tube, pts: np.ndarray) -> np.ndarray:
    """Boolean mask (N,) of the world points (N, 3) inside ``shape``."""
    if isinstance(shape, Ellipsoid):
        q = (pts - np.asarray(shape.center)) / np.asarray(shape.axes)
        return (q * q).sum(axis=1) <= 1.0
    poly = np.asarray(shape.points, dtype=np.float64)
    dist = np.full(len(pts), np.inf)
    for a, b in zip(poly[:-1], poly[1:], strict=True):
        dist = np.minimum(dist, _segment_distance(pts, a, b))
    return dist <= shape.radius


def _jitter_shape(shape: Ellipsoid | Tube, rng: np.random.Generator) -> Ellipsoid | Tube:
    shift = rng.normal(0.0, 2.5, size=3)
    if isinstance(shape, Ellipsoid):
        scale = rng.uniform(0.85, 1.15, size=3)
        return Ellipsoid(
            tuple(np.asarray(shape.center) + shift), tuple(np.asarray(shape.axes) * scale)
        )
    pts = np.asarray(shape.points) + shift + rng.normal(0.0, 1.5, size=(len(shape.points), 3))
    return Tube(tuple(map(tuple, pts)), shape.radius * rng.uniform(0.85, 1.15))


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, coarse: int = 5) -> np.ndarray:
    """A smooth random field in [-1, 1]-ish: coarse Gaussian noise upsampled with cubic splines."""
    small = rng.normal(0.0, 1.0, size=(coarse,) * len(shape))
    zoom = [s / coarse for s in shape]
    return ndimage.zoom(small, zoom, order=3, mode="nearest")[tuple(slice(0, s) for s in shape)]


def phantom_case(seed: int, case_index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generates one case.

    Returns ``(image int16 HU (X, Y, Z), label uint8 (X, Y, Z), affine (4, 4))`` in storage order
    (LPS-like axes: +x left, +y posterior, +z superior), deterministic in ``(seed, case_index)``.
    """
    rng = np.random.default_rng([seed, case_index])
    inplane = rng.uniform(0.9, 1.25)
    slice_mm = rng.choice([2.0, 2.5, 3.0])
    spacing = np.array([inplane, inplane, slice_mm])
    shape = tuple(int(round(f / s)) for f, s in zip(FOV_MM, spacing, strict=True))
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    # origin so that the volume centre sits at world (0, 0, 0)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)

    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]  # RAS mm
    # Smooth deformation (up to ~5 mm) and per-case global body scale.
    disp = np.stack([_smooth_field(shape, rng) for _ in range(3)], axis=-1).reshape(-1, 3)
    body_scale = rng.uniform(0.9, 1.08, size=3)
    pts = world / body_scale + 2.5 * disp

    image: np.ndarray = np.full(len(pts), TISSUE_HU["air"][0], dtype=np.float32)
    label: np.ndarray = np.zeros(len(pts), dtype=np.uint8)
    hu = {k: m + rng.normal(0.0, s) for k, (m, s) in TISSUE_HU.items()}

    # Body: elliptic cylinder of fat with a muscle wall, bowel-filled abdomen, spine.
    bx, by = 66.0 * rng.uniform(0.95, 1.02), 52.0 * rng.uniform(0.92, 1.02)
    r_body = np.sqrt((pts[:, 0] / bx) ** 2 + ((pts[:, 1] + 2) / by) ** 2)
    image[r_body <= 1.0] = hu["fat"]
    image[(r_body <= 0.93) & (r_body > 0.83)] = hu["muscle"]
    cavity = r_body <= 0.80
    bowel_tex = _smooth_field(shape, rng, coarse=9).reshape(-1)
    image[cavity] = hu["bowel"] + 25.0 * bowel_tex[cavity]
    image[cavity & (bowel_tex < -1.1)] = hu["fat"]  # mesenteric fat pockets
    for _ in range(rng.integers(4, 9)):  # bowel gas bubbles
        gas = Ellipsoid(
            (rng.uniform(-40, 40), rng.uniform(0, 40), rng.uniform(-60, 10)),
            tuple(rng.uniform(2, 6, 3)),
        )
        image[_inside(gas, pts) & cavity] = hu["gas"]
    spine = Tube(((0, -38, 70), (0, -37, -70)), 10.0)
    image[_inside(spine, pts)] = hu["bone"]

    texture = _smooth_field(shape, rng, coarse=12).reshape(-1)
    for name, shapes in ANATOMY:
        mask = np.zeros(len(pts), dtype=bool)
        for shape_ in shapes:
            mask |= _inside(_jitter_shape(shape_, rng), pts)
        image[mask] = hu[name] + 8.0 * texture[mask]
        label[mask] = LABEL[name]
    if rng.random() < 0.7:  # stomach content: fluid/gas level in the lumen
        lumen = (label == LABEL["stomach"]) & (texture < 0.2)
        image[lumen] = hu["stomach"] - 15.0

    image = image.reshape(shape)
    label = label.reshape(shape)
    image = ndimage.gaussian_filter(image, sigma=0.6)  # partial-volume blur
    image += rng.normal(0.0, rng.uniform(12.0, 22.0), size=shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return image, label, affine


def case_id(index: int) -> str:
    return f"phantom_{index:03d}"


def dataset_json(num_cases: int) -> dict:
    """nnU-Net v2 ``dataset.json`` for the phantom (labels: name -> id)."""
    return {
        "name": "AbdomenPhantom",
        "description": "Procedural abdominal CT phantom with the 13 Synapse organs (scdl.data.phantom)",
        "channel_names": {"0": "CT"},
        "labels": {name: i for i, name in enumerate(SYNAPSE_CLASSES)},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }


def _atomic_save(img: nib.Nifti1Image, path: Path) -> None:
    atomic_write(path, lambda tmp: nib.save(img, tmp))


def write_phantom(
    out_dir: str | Path, num_cases: int = 30, seed: int = 0, progress: bool = True
) -> Path:
    """Writes the phantom data set (idempotent: existing complete cases are kept). Returns ``out_dir``."""
    out = Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    todo = [
        i
        for i in range(num_cases)
        if not (out / "labelsTr" / f"{case_id(i)}.nii.gz").exists()
        or not (out / "imagesTr" / f"{case_id(i)}_0000.nii.gz").exists()
    ]
    for i in progress_iter(todo, "phantom cases", enabled=progress and bool(todo)):
        image, label, affine = phantom_case(seed, i)
        img = nib.Nifti1Image(image, affine)
        img.header.set_xyzt_units("mm", "sec")
        lab = nib.Nifti1Image(label, affine)
        lab.header.set_xyzt_units("mm", "sec")
        # image first, label last: a label file marks the case complete
        _atomic_save(img, out / "imagesTr" / f"{case_id(i)}_0000.nii.gz")
        _atomic_save(lab, out / "labelsTr" / f"{case_id(i)}.nii.gz")
    (out / "dataset.json").write_text(json.dumps(dataset_json(num_cases), indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="data/phantom/raw", help="output folder (nnU-Net raw layout)"
    )
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_phantom(args.out, args.cases, args.seed)
    print(f"phantom data set: {args.cases} cases in {out}")


if __name__ == "__main__":
    main()
