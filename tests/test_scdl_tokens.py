"""Token construction helpers of SCDL: pooling, soft token labels, class tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scdl.models.scdl import (
    class_tokens_from_token_dist,
    feature_map_to_tokens,
    labels_to_token_dist,
    tokens_to_grid,
)


def _ref_tokens(x: torch.Tensor, grid: int) -> torch.Tensor:
    return F.adaptive_avg_pool3d(x, grid).flatten(2).transpose(1, 2)


@pytest.mark.parametrize(
    "shape,grid", [((2, 3, 8, 8, 8), 4), ((2, 5, 7, 5, 9), 3), ((1, 4, 3, 4, 5), 6)]
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_feature_map_to_tokens_matches_adaptive_pool(shape, grid, channels_last):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    got = feature_map_to_tokens(x, grid)
    assert got.shape == (shape[0], grid**3, shape[1])
    torch.testing.assert_close(got, _ref_tokens(x, grid), atol=1e-6, rtol=1e-5)
    # gradients equal adaptive pooling's and keep the input's memory layout
    w = torch.randn_like(got)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (feature_map_to_tokens(xa, grid) * w).sum().backward()
    (_ref_tokens(xb, grid) * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-6, rtol=1e-5)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    assert xa.grad.is_contiguous(memory_format=fmt)
    # bf16 input: float32 output, as accurate as the bf16 input itself
    got_bf16 = feature_map_to_tokens(x.bfloat16(), grid)
    assert got_bf16.dtype == torch.float32
    torch.testing.assert_close(
        got_bf16, _ref_tokens(x.bfloat16().float(), grid), atol=2e-2, rtol=2e-2
    )


def test_feature_map_to_tokens_gradient_and_autocast():
    x = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: feature_map_to_tokens(t, 3), (x,), fast_mode=True)
    y = torch.randn(2, 3, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 input stays exact under autocast
        got = feature_map_to_tokens(y, 4)
    torch.testing.assert_close(got, _ref_tokens(y, 4), atol=1e-6, rtol=1e-5)


def test_window_matrices_cached_during_validation_still_train():
    """The cached per-axis matrices may first be built under inference mode (validation, eval.py);
    training must still be able to save them for backward."""
    shape = (1, 3, 11, 13, 7)  # sizes no other test uses, so the cache starts empty for them
    with torch.inference_mode():
        feature_map_to_tokens(torch.randn(shape), 4)
        labels_to_token_dist(torch.zeros(1, *shape[2:], dtype=torch.long), 3, 4)
    x = torch.randn(shape, requires_grad=True)
    feature_map_to_tokens(x, 4).sum().backward()
    torch.testing.assert_close(
        x.grad,
        torch.autograd.functional.vjp(
            lambda f: F.adaptive_avg_pool3d(f, 4).flatten(2).transpose(1, 2),
            x.detach(),
            torch.ones(1, 64, 3),
        )[1],
    )


def test_tokens_to_grid_layout():
    x = torch.randn(2, 3, 4, 4, 4)
    tokens = feature_map_to_tokens(x, 4)  # identity pooling
    torch.testing.assert_close(tokens_to_grid(tokens, 4), x)
    # token l = (i * t + j) * t + k holds voxel (i, j, k)
    assert torch.equal(tokens[1, (2 * 4 + 1) * 4 + 3], x[1, :, 2, 1, 3])
    with pytest.raises(ValueError):
        tokens_to_grid(tokens, 3)


def test_area_token_dist_exact_proportions_divisible():
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    labels[0, 0, 0, :2] = 1  # token (0,0,0) block [0:2]^3: 2 voxels class 1
    labels[0, 1, 1, 1] = 2  # ... and 1 voxel class 2 -> 5 of class 0
    labels[0, 2:, 2:, 2:] = 1  # token (1,1,1) entirely class 1
    dist = labels_to_token_dist(labels, 3, 2, mode="area")
    assert dist.shape == (1, 8, 3)
    torch.testing.assert_close(dist[0, 0], torch.tensor([5 / 8, 2 / 8, 1 / 8]))
    torch.testing.assert_close(dist[0, 7], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(dist[0, 1:7], torch.tensor([1.0, 0.0, 0.0]).expand(6, 3))


def test_area_token_dist_exact_proportions_overlapping_windows():
    # 5 voxels -> 2 tokens: adaptive windows [0, 3) and [2, 5) share voxel 2.
    labels = torch.tensor([0, 1, 2, 2, 1]).view(1, 5, 1, 1)
    dist = labels_to_token_dist(labels, 3, 2, mode="area").view(2, 2, 2, 3)
    torch.testing.assert_close(dist[0, 0, 0], torch.tensor([1 / 3, 1 / 3, 1 / 3]))
    torch.testing.assert_close(dist[1, 1, 1], torch.tensor([0.0, 1 / 3, 2 / 3]))


@pytest.mark.parametrize(
    "shape,grid", [((2, 16, 16, 16), 4), ((2, 13, 11, 9), 4), ((1, 3, 4, 5), 6)]
)
def test_area_token_dist_equals_pooled_onehot(shape, grid):
    torch.manual_seed(1)
    labels = torch.randint(0, 5, shape)
    onehot = F.one_hot(labels, 5).permute(0, 4, 1, 2, 3).double()
    ref = _ref_tokens(onehot, grid).float()
    dist = labels_to_token_dist(labels, 5, grid)
    torch.testing.assert_close(dist, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(dist.sum(-1), torch.ones(shape[0], grid**3))


def test_trilinear_token_dist():
    torch.manual_seed(2)
    labels = torch.randint(0, 4, (2, 12, 12, 12))
    dist = labels_to_token_dist(labels, 4, 3, mode="trilinear")
    onehot = F.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()
    ref = F.interpolate(onehot, size=(3, 3, 3), mode="trilinear", align_corners=False)
    ref = ref.flatten(2).transpose(1, 2)
    torch.testing.assert_close(dist, ref / ref.sum(-1, keepdim=True))
    torch.testing.assert_close(dist.sum(-1), torch.ones(2, 27))
    assert (dist >= 0).all()


def test_token_dist_rejects_bad_input():
    with pytest.raises(ValueError):
        labels_to_token_dist(torch.full((1, 4, 4, 4), 3), 3, 2)
    with pytest.raises(ValueError):
        labels_to_token_dist(torch.zeros(1, 4, 4, 4, dtype=torch.long), 3, 2, mode="nearest")


def test_class_tokens_are_mass_weighted_means():
    tokens = torch.tensor(
        [[[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]], [[2.0, 2.0], [6.0, 0.0], [0.0, 0.0]]]
    )  # (B=2, L=3, D=2)
    y_dist = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]],
            [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
        ]
    )  # (B, L, C=3); sample 0 has no class 2, sample 1 no class 1
    x_cls, y_cls = class_tokens_from_token_dist(tokens, y_dist)
    assert y_cls.tolist() == [0, 1, 0, 2]
    expected = torch.tensor(
        [
            [1.0 / 1.5, 1.0 / 1.5],  # b0 c0: (1*[1,0] + .5*[0,2]) / 1.5
            [4.0 / 1.5, 5.0 / 1.5],  # b0 c1: (.5*[0,2] + 1*[4,4]) / 1.5
            [0.0, 0.0],  # b1 c0
            [4.0, 1.0],  # b1 c2: ([2,2] + [6,0]) / 2
        ]
    )
    torch.testing.assert_close(x_cls, expected)
    x_fg, y_fg = class_tokens_from_token_dist(tokens, y_dist, include_background=False)
    assert y_fg.tolist() == [1, 2]
    torch.testing.assert_close(x_fg, expected[[1, 3]])
    # min_mass drops classes with too little mass (b0 c0 has 1.5, b0 c1 1.5, b1 c0 1, b1 c2 2)
    _, y_big = class_tokens_from_token_dist(tokens, y_dist, min_mass=1.2)
    assert y_big.tolist() == [0, 1, 2]
