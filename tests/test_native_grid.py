"""Predictions go back onto the scan's own grid without losing a voxel: anatomy touching every face
of the scan, in several orientations and spacings, through every preprocessing the project has
(reorientation, resampling, resize, array transposition), mapped back by
:func:`scdl.inference.native_grid.labels_to_original_grid`.

Fixture: the label fills the whole volume (no air border), so its first and last slices along
every axis are anatomy; a constant cache map must come back constant, and any cache map must come
back as the label of the nearest cache voxel of each source voxel (found here independently, with
a KD-tree over the cache grid, which clamps to the edge like the nearest-neighbour rule asks)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from scdl.data.layouts import RawCase
from scdl.data.prepare import PreprocessProtocol, preprocess_case
from scdl.inference.native_grid import labels_to_original_grid, source_to_cache_index
from scdl.inference.segment import segment_volume

SHAPE = (21, 18, 11)


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


#: storage orientations: the direction part of the affine (columns = voxel axes in world)
ORIENTATIONS = {
    "RAS": np.eye(3),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "PIL": np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "LPS-oblique": _rotation(10.0) @ np.diag([-1.0, -1.0, 1.0]),
}
SPACINGS = {
    "target": (1.5, 1.5, 2.0),
    "finer": (1.2, 1.2, 2.5),
    "thin-thick": (0.8, 0.7, 3.0),
    "coarser": (2.0, 1.9, 1.0),
}
PROTOCOLS = {
    "standard": PreprocessProtocol(name="standard"),
    "reorient-only": PreprocessProtocol(name="r", spacing=None),
    "as-stored": PreprocessProtocol(name="s", orientation=None, spacing=None),
    "resize": PreprocessProtocol(name="paper", resize=(12, 10, 7)),
}


def _anatomy(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """Labels 1..3 in 4-voxel blocks filling the whole volume (every face is anatomy), so that
    resampling keeps every class; uint8 (X, Y, Z)."""
    coarse = np.random.default_rng(seed).integers(1, 4, size=tuple(-(-s // 4) for s in shape))
    blocks = np.kron(coarse, np.ones((4, 4, 4), np.int64)).astype(np.uint8)
    return np.ascontiguousarray(blocks[: shape[0], : shape[1], : shape[2]])


def _case(tmp_path: Path, orientation: str, spacing: str, label=None) -> tuple[RawCase, np.ndarray]:
    affine = np.eye(4)
    affine[:3, :3] = ORIENTATIONS[orientation] @ np.diag(SPACINGS[spacing])
    affine[:3, 3] = [37.3, -120.6, 410.2]  # a scanner origin, not 0
    label = _anatomy() if label is None else label
    image = (label.astype(np.int16) * 100 - 50).astype(np.int16)
    folder = tmp_path / f"{orientation}_{spacing}"
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), folder / "c_0000.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "c.nii.gz")
    return RawCase("c", folder / "c_0000.nii.gz", folder / "c.nii.gz"), label


def _nearest_reference(cache_labels: np.ndarray, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Label of the nearest cache voxel (in cache index space) of every source voxel, and a mask
    of the source voxels whose nearest cache voxel is unique (no tie within 1e-6)."""
    shape = tuple(meta["original_shape"])
    m = source_to_cache_index(meta)
    src = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    at = src @ m[:3, :3].T + m[:3, 3]
    grid = np.stack(
        np.meshgrid(*[np.arange(n) for n in cache_labels.shape], indexing="ij"), -1
    ).reshape(-1, 3)
    dist, idx = cKDTree(grid).query(at, k=2)
    unique = (dist[:, 1] - dist[:, 0]) > 1e-6
    return cache_labels.reshape(-1)[idx[:, 0]].reshape(shape), unique.reshape(shape)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("spacing", list(SPACINGS))
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_every_source_voxel_gets_its_nearest_cache_label(tmp_path, orientation, spacing, protocol):
    case, label = _case(tmp_path, orientation, spacing)
    _, cached, meta = preprocess_case(case, PROTOCOLS[protocol])
    assert tuple(meta["original_shape"]) == label.shape

    constant = np.full(cached.shape, 7, np.uint8)
    back = labels_to_original_grid(constant, meta)
    assert back.shape == label.shape and back.dtype == np.uint8
    assert (back == 7).all(), f"{(back != 7).sum()} voxels lost"

    rng = np.random.default_rng(1)
    random = rng.integers(0, 200, size=cached.shape).astype(np.uint8)
    reference, unique = _nearest_reference(random, meta)
    back = labels_to_original_grid(random, meta)
    assert unique.mean() > 0.5  # ties are rare: most voxels are compared
    np.testing.assert_array_equal(back[unique], reference[unique])

    # the preprocessed label itself: its border slices come back (never blanked)
    back = labels_to_original_grid(cached, meta)
    for axis in range(3):
        for end in (0, -1):
            face = np.take(back, end, axis=axis)
            assert (face > 0).all(), (axis, end)
    if protocol in ("reorient-only", "as-stored") and orientation != "LPS-oblique":
        np.testing.assert_array_equal(back, label)  # permutations and flips are exact


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIL"])
def test_random_native_labels_survive_reorientation_exactly(tmp_path, orientation):
    """No resampling: native -> cache (MONAI Orientation) -> native is the identity, voxel for
    voxel, for a label with no structure at all."""
    label = np.random.default_rng(3).integers(0, 5, size=SHAPE).astype(np.uint8)
    case, _ = _case(tmp_path, orientation, "target", label=label)
    # the standard protocol resamples PIL (its stored spacings land on other world axes)
    same_spacing = ["standard"] if orientation in ("RAS", "LPS") else []
    for protocol in [PROTOCOLS[p] for p in ["reorient-only", *same_spacing]]:
        _, cached, meta = preprocess_case(case, protocol)
        np.testing.assert_array_equal(labels_to_original_grid(cached, meta), label)


class _ThresholdModule(torch.nn.Module):
    """Stand-in network: class 1 where the (windowed) image is above 0.45 (0 HU -> 0.31, 100 HU -> 0.56)."""

    def predict_volume(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x > 0.45).float()
        return torch.cat([1 - fg, fg], dim=1)


def test_the_same_scan_stored_lps_and_ras_gives_the_same_prediction(tmp_path):
    """The issue's case: one scan saved LPS (affine diag(-1.5, -1.5, 2)) and RAS. The segment ->
    native-grid path of predict.py must give the same labels at the same world positions (the
    LPS copy lost its last x and y slices)."""
    label = np.ones(SHAPE, np.uint8)  # foreground up to every face
    label[5:9, 4:7, 3:5] = 0
    image = (label.astype(np.int16) * 100).astype(np.int16)
    ras = np.diag([1.5, 1.5, 2.0, 1.0])
    lps = np.diag([-1.5, -1.5, 2.0, 1.0])
    lps[:3, 3] = [1.5 * (SHAPE[0] - 1), 1.5 * (SHAPE[1] - 1), 0.0]  # same world box
    flipped = image[::-1, ::-1, :]
    out = {}
    for name, affine, data in (("ras", ras, image), ("lps", lps, flipped)):
        path = tmp_path / f"{name}_0000.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)
        arr, _, meta = preprocess_case(RawCase(name, path), PROTOCOLS["standard"])
        pred = segment_volume(_ThresholdModule(), arr, torch.device("cpu"))
        out[name] = labels_to_original_grid(pred, meta)
    np.testing.assert_array_equal(out["lps"][::-1, ::-1, :], out["ras"])
    np.testing.assert_array_equal(out["ras"], label)


def test_a_meta_of_another_grid_is_refused():
    meta = {
        "case_id": "x",
        "shape": [4, 4, 4],
        "affine": np.eye(4).tolist(),
        "original_affine": np.diag([3.0, 1.0, 1.0, 1.0]).tolist(),  # reaches index 9 of 0..3
        "original_shape": [4, 4, 4],
    }
    with pytest.raises(ValueError, match="case x: .*outside the preprocessed grid 0..3"):
        labels_to_original_grid(np.zeros((4, 4, 4), np.uint8), meta)
