"""Evaluation metrics on hand-made masks: empty rules, exact plane/cube geometry, brute force,\nequality with MONAI's distance metrics."""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scdl.evaluation.protocols import (
    PAPER_SHAPE,
    compute_case_metrics,
    paper_case_metrics,
    resize_labels_nearest,
    standard_case_metrics,
    surface_distances,
)
from scdl.metrics.results import aggregate_metrics, format_metrics_table, save_metrics

# ----------------------------------------------------------------------------------------------
# Independent brute force: surface by explicit 6-neighbour test (outside = background), then all
# surface-voxel pairs.
# ----------------------------------------------------------------------------------------------


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    surface = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            surface |= mask & ~np.roll(padded, step, axis=axis)[inner]
    return surface


def _brute_distances(p: np.ndarray, g: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    sp = np.asarray(spacing, dtype=float)
    cp = np.argwhere(_brute_surface(p)) * sp
    cg = np.argwhere(_brute_surface(g)) * sp
    d = np.sqrt(((cp[:, None, :] - cg[None, :, :]) ** 2).sum(-1))
    return d.min(1), d.min(0)


def _brute_metrics(p, g, spacing, tol, symmetric):
    """``symmetric``: the standard protocol (ASSD, HD95 = max of the directed 95th percentiles, as
    MONAI); else the paper's medpy way (ASD pred -> GT, HD95 of the pooled distances)."""
    d_pg, d_gp = _brute_distances(p, g, spacing)
    both = np.concatenate([d_pg, d_gp])
    return {
        "dice": 2 * (p & g).sum() / (p.sum() + g.sum()),
        "asd": both.mean() if symmetric else d_pg.mean(),
        "hd95": (
            max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
            if symmetric
            else np.percentile(both, 95)
        ),
        "nsd": ((d_pg <= tol).sum() + (d_gp <= tol).sum()) / both.size,
    }


# ----------------------------------------------------------------------------------------------
# Empty-mask rules
# ----------------------------------------------------------------------------------------------


def _rule_case() -> tuple[np.ndarray, np.ndarray]:
    """C = 5: class 1 identical, class 2 only in GT, class 3 only in prediction, class 4 nowhere."""
    gt = np.zeros((20, 10, 8), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = 1
    pred[2:6, 2:6, 2:6] = 1
    gt[10:14, 2:6, 2:6] = 2
    pred[15:18, 5:8, 3:6] = 3
    return pred, gt


def test_identical_masks_give_perfect_scores() -> None:
    pred, gt = _rule_case()
    for res in (
        paper_case_metrics(pred, gt, 5, target_shape=None),
        standard_case_metrics(pred, gt, 5, spacing=(0.7, 0.7, 3.0)),
    ):
        assert res["dice"][0] == 1.0 and res["asd"][0] == 0.0 and res["hd95"][0] == 0.0
        assert res["nsd"][0] == 1.0


def test_paper_empty_rules_and_128_penalty() -> None:
    pred, gt = _rule_case()
    res = paper_case_metrics(pred, gt, 5, target_shape=None)
    # order per class: dice, asd, hd95, nsd
    assert [res[m][1] for m in ("dice", "asd", "hd95", "nsd")] == [0.0, 128.0, 128.0, 0.0]
    assert [res[m][2] for m in ("dice", "asd", "hd95", "nsd")] == [0.0, 128.0, 128.0, 0.0]
    assert [res[m][3] for m in ("dice", "asd", "hd95", "nsd")] == [1.0, 0.0, 0.0, 1.0]


def test_paper_whole_prediction_empty_rule() -> None:
    _, gt = _rule_case()
    empty = np.zeros_like(gt)
    res = paper_case_metrics(empty, gt, 5, target_shape=None)
    for m in ("dice", "asd", "hd95", "nsd"):
        assert np.all(res[m] == 0.0)  # released-code rule: everything 0, even ASD
    res = paper_case_metrics(empty, gt, 5, target_shape=None, empty_prediction_rule=False)
    assert res["asd"].tolist() == [128.0, 128.0, 0.0, 0.0]
    assert res["dice"].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_standard_empty_rules() -> None:
    pred, gt = _rule_case()
    spacing = (0.5, 1.0, 2.0)
    res = standard_case_metrics(pred, gt, 5, spacing=spacing)
    diagonal = math.sqrt((20 * 0.5) ** 2 + (10 * 1.0) ** 2 + (8 * 2.0) ** 2)
    for c in (1, 2):  # one empty
        assert res["dice"][c] == 0.0 and res["nsd"][c] == 0.0
        assert res["asd"][c] == pytest.approx(diagonal) and res["hd95"][c] == pytest.approx(
            diagonal
        )
    assert all(math.isnan(res[m][3]) for m in ("dice", "asd", "hd95", "nsd"))  # both empty
    custom = standard_case_metrics(pred, gt, 5, spacing=spacing, empty_distance=99.0)
    assert custom["hd95"][1] == 99.0


# ----------------------------------------------------------------------------------------------
# Exact geometry
# ----------------------------------------------------------------------------------------------


def _planes(shift: int, axis: int, shape=(20, 14, 12)) -> tuple[np.ndarray, np.ndarray]:
    """One-voxel-thick plates perpendicular to ``axis``, the prediction ``shift`` voxels further."""
    gt = np.zeros(shape, dtype=np.int64)
    pred = np.zeros_like(gt)
    box = [slice(2, 10), slice(2, 10), slice(2, 10)]
    box[axis] = slice(4, 5)
    gt[tuple(box)] = 1
    box[axis] = slice(4 + shift, 5 + shift)
    pred[tuple(box)] = 1
    return pred, gt


@pytest.mark.parametrize(("axis", "shift"), [(0, 3), (2, 2)])
def test_shifted_planes_exact_distances(axis: int, shift: int) -> None:
    # Every voxel of a plate is a surface voxel; its nearest partner is the voxel with the same
    # in-plane coordinates, `shift` voxels away, so every directed distance is shift * spacing.
    spacing = (0.5, 1.0, 2.0)
    pred, gt = _planes(shift, axis)
    vox = paper_case_metrics(pred, gt, 2, target_shape=None)
    assert vox["dice"][0] == 0.0
    assert vox["asd"][0] == pytest.approx(shift) and vox["hd95"][0] == pytest.approx(shift)
    mm = standard_case_metrics(pred, gt, 2, spacing=spacing)
    expected_mm = shift * spacing[axis]
    assert mm["asd"][0] == pytest.approx(expected_mm)
    assert mm["hd95"][0] == pytest.approx(expected_mm)
    # NSD: all surface voxels within tolerance iff shift * spacing <= tau
    assert (
        standard_case_metrics(pred, gt, 2, spacing=spacing, nsd_tolerance=expected_mm)["nsd"][0]
        == 1.0
    )
    assert (
        standard_case_metrics(pred, gt, 2, spacing=spacing, nsd_tolerance=expected_mm - 0.1)["nsd"][
            0
        ]
        == 0.0
    )
    assert paper_case_metrics(pred, gt, 2, target_shape=None, nsd_tolerance=shift)["nsd"][0] == 1.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.5, 3.0)])
def test_shifted_cube_dice_and_brute_force_distances(spacing) -> None:
    a, k = 6, 2
    gt = np.zeros((16, 16, 16), dtype=np.int64)
    gt[4 : 4 + a, 4 : 4 + a, 4 : 4 + a] = 1
    pred = np.roll(gt, k, axis=0)
    # overlap (a - k) a^2 out of 2 a^3 -> Dice (a - k) / a
    expected_dice = (a - k) / a
    p, g = pred == 1, gt == 1
    tol = 1.55  # off the distance values: no float ties with the brute force
    std = standard_case_metrics(pred, gt, 2, spacing=spacing, nsd_tolerance=tol)
    ref = _brute_metrics(p, g, spacing, tol, symmetric=True)
    assert std["dice"][0] == pytest.approx(expected_dice)
    for m in ("asd", "hd95", "nsd"):
        assert std[m][0] == pytest.approx(ref[m]), m
    # the face k voxels outside the GT cube sits exactly k * spacing_x from the GT face
    assert _brute_distances(p, g, spacing)[0].max() == pytest.approx(k * spacing[0])
    if spacing == (1.0, 1.0, 1.0):
        paper = paper_case_metrics(pred, gt, 2, target_shape=None, nsd_tolerance=tol)
        ref_dir = _brute_metrics(p, g, spacing, tol, symmetric=False)
        for m in ("dice", "asd", "hd95", "nsd"):
            assert paper[m][0] == pytest.approx(ref_dir[m]), m  # ASD directed pred -> GT


def test_multiclass_random_blobs_match_brute_force() -> None:
    # Blobs touching the volume border exercise the crop: outside the volume is background.
    rng = np.random.default_rng(0)
    shape = (14, 12, 10)
    gt = rng.integers(0, 4, size=shape)
    pred = np.where(rng.random(shape) < 0.3, rng.integers(0, 4, size=shape), gt)
    spacing = (0.9, 1.1, 2.3)
    res = standard_case_metrics(
        torch.from_numpy(pred), torch.from_numpy(gt), 4, spacing=spacing, nsd_tolerance=2.0
    )
    for c in range(1, 4):
        ref = _brute_metrics(pred == c, gt == c, spacing, 2.0, symmetric=True)
        for m in ("dice", "asd", "hd95", "nsd"):
            assert res[m][c - 1] == pytest.approx(ref[m]), (c, m)
    d_pg, d_gp = surface_distances(pred == 2, gt == 2, spacing)
    b_pg, b_gp = _brute_distances(pred == 2, gt == 2, spacing)
    assert np.allclose(np.sort(d_pg), np.sort(b_pg)) and np.allclose(np.sort(d_gp), np.sort(b_gp))


# ----------------------------------------------------------------------------------------------
# Paper resize step
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), [((40, 30, 21), (16, 16, 8)), ((10, 9, 5), (16, 16, 8))])
def test_resize_matches_torch_nearest(src, dst) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 14, size=src)
    ref = F.interpolate(torch.from_numpy(labels).float()[None, None], size=dst, mode="nearest")
    assert np.array_equal(resize_labels_nearest(labels, dst), ref[0, 0].long().numpy())


def test_paper_protocol_resizes_to_160_160_80() -> None:
    # (320, 320, 160) -> PAPER_SHAPE keeps even indices: plates at x = 10 and x = 16 land on
    # x = 5 and x = 8, i.e. 3 voxels apart on the evaluation grid (6 at native resolution).
    gt = np.zeros((320, 320, 160), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[10, 40:100, 20:60] = 1
    pred[16, 40:100, 20:60] = 1
    assert resize_labels_nearest(gt, PAPER_SHAPE).shape == PAPER_SHAPE
    res = compute_case_metrics(pred, gt, 2, protocol="paper")
    assert res["asd"][0] == pytest.approx(3.0) and res["hd95"][0] == pytest.approx(3.0)
    native = compute_case_metrics(pred, gt, 2, protocol="standard")
    assert native["asd"][0] == pytest.approx(6.0)


# ----------------------------------------------------------------------------------------------
# Aggregation and reports
# ----------------------------------------------------------------------------------------------


def test_aggregate_save_and_format(tmp_path) -> None:
    nan = float("nan")
    cases = [
        {"dice": [0.8, 0.4], "asd": [1.0, 3.0], "hd95": [2.0, 6.0], "nsd": [0.9, 0.5]},
        {"dice": [0.6, nan], "asd": [3.0, nan], "hd95": [4.0, nan], "nsd": [0.7, nan]},
    ]
    summary = aggregate_metrics(
        cases, class_names=["liver", "pancreas"], case_ids=["a", "b"], protocol="standard"
    )
    liver, pancreas = summary["per_class"]["liver"], summary["per_class"]["pancreas"]
    assert liver["dice"]["mean"] == pytest.approx(0.7) and liver["dice"]["std"] == pytest.approx(
        0.1
    )
    assert pancreas["dice"] == {"mean": pytest.approx(0.4), "std": 0.0, "n": 1}  # NaN excluded
    # overall mean = mean of class means (0.7 + 0.4) / 2; std over cases of the case averages
    # (case a: 0.6, case b: 0.6 (pancreas NaN skipped)) -> 0
    assert summary["overall"]["dice"]["mean"] == pytest.approx(0.55)
    assert summary["overall"]["dice"]["std"] == pytest.approx(0.0)
    assert summary["overall"]["asd"]["mean"] == pytest.approx((2.0 + 3.0) / 2)

    paths = save_metrics(summary, tmp_path, stem="test")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["per_case"][1]["values"]["pancreas"]["dice"] is None
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["class"] for r in rows] == ["liver", "pancreas", "mean"]
    assert float(rows[0]["hd95_mean"]) == pytest.approx(3.0)
    per_case = list(csv.DictReader(paths["per_case_csv"].open()))
    assert len(per_case) == 4 and per_case[3]["dice"] == "nan"

    plain = format_metrics_table(summary)
    assert (
        "liver" in plain
        and "70.00 ± 10.00" in plain
        and plain.strip().splitlines()[-1].startswith("mean")
    )
    fancy = format_metrics_table(summary, use_rich=True, percent=False)
    assert "pancreas" in fancy and "0.40 ± 0.00" in fancy


def test_full_size_case_is_fast() -> None:
    # 160 x 160 x 80 with 13 foreground classes: a few seconds at most per protocol.
    rng = np.random.default_rng(2)
    gt = np.zeros(PAPER_SHAPE, dtype=np.int64)
    for c in range(1, 14):
        x, y, z = rng.integers(5, 110), rng.integers(5, 110), rng.integers(5, 40)
        sx, sy, sz = rng.integers(8, 45, size=3)
        gt[x : x + sx, y : y + sy, z : z + sz // 2] = c
    pred = np.roll(gt, 2, axis=1)
    pred[rng.random(PAPER_SHAPE) < 0.002] = 5  # scattered false positives: whole-volume box
    start = time.perf_counter()
    compute_case_metrics(pred, gt, 14, protocol="standard", spacing=(0.8, 0.8, 2.5))
    compute_case_metrics(pred, gt, 14, protocol="paper")
    assert time.perf_counter() - start < 10.0


# ----------------------------------------------------------------------------------------------
# Standard protocol == MONAI's metric classes
# ----------------------------------------------------------------------------------------------


def _one_hot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    t = torch.from_numpy(labels).long()
    return F.one_hot(t, num_classes).movedim(-1, 0)[None].float()  # (1, C, X, Y, Z)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 1.1, 2.3)])
def test_standard_distances_equal_monai_metrics(spacing) -> None:
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric

    rng = np.random.default_rng(3)
    shape = (18, 15, 11)
    gt = np.zeros(shape, dtype=np.int64)
    gt[2:10, 3:12, 2:8] = 1  # a box
    gt[11:17, 1:6, 4:11] = 2  # touches the volume border
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    gt[((zz - 6) ** 2 + (yy - 10) ** 2 + (xx - 5) ** 2) <= 9] = 3  # a ball
    pred = np.roll(gt, 1, axis=0)
    pred[rng.random(shape) < 0.02] = 2  # scattered false positives
    pred[8:10, 8:10, 8:10] = 0
    tau = 1.6
    ours = standard_case_metrics(pred, gt, 4, spacing=spacing, nsd_tolerance=tau)
    y_pred, y = _one_hot(pred, 4), _one_hot(gt, 4)
    monai = {
        "hd95": HausdorffDistanceMetric(include_background=False, percentile=95),
        "asd": SurfaceDistanceMetric(include_background=False, symmetric=True),
        "nsd": SurfaceDiceMetric([tau] * 3, include_background=False),
    }
    for m, metric in monai.items():
        ref = metric(y_pred, y, spacing=list(spacing))[0].numpy()
        np.testing.assert_allclose(ours[m], ref, rtol=1e-5, atol=1e-6, err_msg=m)


def test_standard_empty_rules_where_monai_has_none() -> None:
    # MONAI: inf / NaN for a class missing on one side; ours: the documented penalty / 0 / NaN.
    pred, gt = _rule_case()
    res = standard_case_metrics(pred, gt, 5)
    assert np.isfinite(res["hd95"][1]) and np.isfinite(res["asd"][2])
    assert np.isnan(res["dice"][3]) and np.isnan(res["nsd"][3])


def test_an_unknown_protocol_is_refused_by_name():
    import numpy as np
    import pytest

    from scdl.evaluation.protocols import check_protocol, compute_case_metrics

    labels = np.zeros((4, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"protocol must be paper\|standard, got 'nnunet'"):
        compute_case_metrics(labels, labels, 2, "nnunet")
    assert check_protocol("paper") == "paper"
