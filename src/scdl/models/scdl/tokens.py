"""Token construction for SCDL (docs/method.md §3.5): feature maps and label maps -> token grids.

Token order everywhere is the row-major flattening of the ``t x t x t`` grid (x slowest, z fastest), so
:func:`feature_map_to_tokens` and :func:`tokens_to_grid` are inverse layouts of each other.

Shapes: ``B`` batch, ``D`` feature channels, ``t`` token grid size per axis, ``L = t**3`` tokens,
``C`` classes (background included).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
import torch.nn.functional as F

TokenDistMode = Literal["area", "trilinear"]


def _window_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    """Adaptive-pooling windows ``[floor(i*n/t), ceil((i+1)*n/t))`` of one axis (PyTorch's rule)."""
    return [((i * size) // grid, -((-(i + 1) * size) // grid)) for i in range(grid)]


# The per-axis window matrices below depend only on (size, grid, dtype, device): they are built
# once and cached (a Python loop of tiny writes per call is pure launch overhead on a GPU). They are
# built outside inference mode, so a matrix first made during validation can still be saved for
# backward in training; callers only read them.


@functools.cache
@torch.inference_mode(False)
def _indicator(size: int, grid: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(t, n) 0/1 window-membership matrix of one axis (exact in any float dtype)."""
    mat = torch.zeros(grid, size, dtype=dtype, device=device)
    for i, (s, e) in enumerate(_window_bounds(size, grid)):
        mat[i, s:e] = 1.0
    return mat


@functools.cache
@torch.inference_mode(False)
def _inv_window_sizes(
    size: int, grid: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(t,) reciprocal window sizes of one axis."""
    sizes = [e - s for s, e in _window_bounds(size, grid)]
    return 1.0 / torch.tensor(sizes, dtype=dtype, device=device)


def _x_major(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """View of a (B, D, X, Y, Z) tensor with X as the middle axis of a 3-D matrix stack, no copy.

    channels_last_3d: (B, X, Y*Z*D); contiguous: (B*D, X, Y*Z).
    """
    b, d, nx, ny, nz = t.shape
    if channels_last:
        return t.permute(0, 2, 3, 4, 1).reshape(b, nx, ny * nz * d)
    return t.reshape(b * d, nx, ny * nz)


class _WindowSumX(torch.autograd.Function):
    """Sums a (B, D, X, Y, Z) map over the x-windows of ``ix`` (t, X) -> ``ix @ _x_major(x)``.

    Same maths as a matmul, but the gradient is written straight into a fresh tensor with the input's
    own memory layout (not a permuted view of a matmul result). ``x9`` also feeds the segmentation
    head, and autograd can only sum its two gradients in place when one of them is such a plain dense
    tensor; otherwise it allocates a third full-resolution buffer (~30-40 ms for a (4, 16, 64^3) bf16
    map on a 2-core CPU, mostly page faults).
    """

    @staticmethod
    def forward(
        ctx: Any, features: torch.Tensor, ix: torch.Tensor, channels_last: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(ix)
        ctx.shape = features.shape
        ctx.channels_last = channels_last
        return torch.matmul(ix, _x_major(features, channels_last))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (ix,) = ctx.saved_tensors
        fmt = torch.channels_last_3d if ctx.channels_last else torch.contiguous_format
        out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=fmt)
        torch.matmul(ix.t(), grad, out=_x_major(out, ctx.channels_last))
        return out, None, None


def feature_map_to_tokens(features: torch.Tensor, grid: int) -> torch.Tensor:
    """Adaptive-average-pools a feature map to a ``grid**3`` token grid.

    Numerically ``adaptive_avg_pool3d(features, grid).flatten(2).transpose(1, 2)``, computed as three
    separable matmuls with the per-axis window matrices: on CPU ``adaptive_avg_pool3d`` takes
    ~0.1-0.6 s (forward + backward) for a (4, 16, 64..96^3) bf16 channels_last map, the matmuls a few
    ms. Both memory formats (contiguous and ``channels_last_3d``) are read without a copy.

    Args:
        features: (B, D, X, Y, Z) feature map (e.g. VNet ``x9``), any float dtype.
        grid: tokens per axis ``t``.

    Returns:
        (B, t**3, D) tokens in at least float32 (bf16/fp16 inputs are summed along the first axis in
        their own dtype with exact 0/1 weights, everything after that in float32).
    """
    if features.dim() != 5:
        raise ValueError(f"features must be (B, D, X, Y, Z), got shape {tuple(features.shape)}")
    b, d, nx, ny, nz = features.shape
    dev = features.device
    out_dtype = torch.promote_types(features.dtype, torch.float32)
    channels_last = d > 1 and features.is_contiguous(memory_format=torch.channels_last_3d)
    if not channels_last:
        features = features.contiguous()
    with torch.autocast(device_type=dev.type, enabled=False):
        ix = _indicator(nx, grid, features.dtype, dev)
        ay = (
            _indicator(ny, grid, out_dtype, dev)
            * _inv_window_sizes(ny, grid, out_dtype, dev)[:, None]
        )
        az = (
            _indicator(nz, grid, out_dtype, dev)
            * _inv_window_sizes(nz, grid, out_dtype, dev)[:, None]
        )
        # x-window sizes are applied last, on the small (B, t, t, t, D) result
        inv_x = _inv_window_sizes(nx, grid, out_dtype, dev)
        if features.requires_grad and torch.is_grad_enabled():
            s = _WindowSumX.apply(features, ix, channels_last).to(out_dtype)
        else:  # the same matmul; a plain op, which TorchScript export can keep (no Function)
            s = torch.matmul(ix, _x_major(features, channels_last)).to(out_dtype)
        if channels_last:  # s: (B, t, Y*Z*D)
            s = torch.matmul(ay, s.reshape(b * grid, ny, nz * d))  # (B*t, t, Z*D)
            s = torch.matmul(az, s.reshape(b * grid * grid, nz, d))  # (B*t*t, t, D)
            s = s.reshape(b, grid, grid * grid, d) * inv_x.view(1, grid, 1, 1)
            return s.reshape(b, grid**3, d)
        # s: (B*D, t, Y*Z)
        s = torch.matmul(ay, s.reshape(b * d * grid, ny, nz))  # (B*D*t, t, Z)
        s = torch.matmul(s, az.t())  # (B*D*t, t, t)
        s = s.reshape(b, d, grid, grid * grid) * inv_x.view(1, 1, grid, 1)
        return s.reshape(b, d, grid**3).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse layout of :func:`feature_map_to_tokens`: (B, t**3, Z) -> (B, Z, t, t, t)."""
    b, length, channels = tokens.shape
    if length != grid**3:
        raise ValueError(f"expected {grid**3} tokens for grid {grid}, got {length}")
    return tokens.transpose(1, 2).reshape(b, channels, grid, grid, grid)


@functools.cache
@torch.inference_mode(False)
def _adaptive_segments(
    size: int, grid: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Splits one axis into the segments on which adaptive-pool window membership is constant.

    Adaptive-pooling windows (:func:`_window_bounds`) overlap when ``t`` does not divide ``n``.
    Returns ``seg_of_voxel`` (n,) long and the window/segment averaging matrix (t, n_seg) float whose
    row ``i`` holds ``1/|window i|`` on the segments of window i.
    """
    windows = _window_bounds(size, grid)
    bounds = sorted({v for w in windows for v in w})  # segment boundaries, 0 ... size
    seg_of_voxel = torch.bucketize(
        torch.arange(size, device=device), torch.tensor(bounds[1:], device=device), right=True
    )
    n_seg = len(bounds) - 1
    avg = torch.zeros(grid, n_seg, device=device)
    for i, (s, e) in enumerate(windows):
        first, last = bounds.index(s), bounds.index(e)
        avg[i, first:last] = 1.0 / (e - s)
    return seg_of_voxel, avg


def _area_token_dist(labels: torch.Tensor, num_classes: int, grid: int) -> torch.Tensor:
    """Exact per-token class proportions (== adaptive avg pool of the one-hot) without a one-hot.

    Voxels are counted per (sample, segment cell, class) with one ``bincount`` (cells are the
    products of per-axis segments from :func:`_adaptive_segments`; for a divisible size they are the
    tokens themselves), then cells are averaged into windows separably. This avoids materialising a
    (B, C, X, Y, Z) one-hot, which at 96^3 costs ~10x more time and memory.
    """
    b, *spatial = labels.shape
    device = labels.device
    segs = [_adaptive_segments(n, grid, device) for n in spatial]
    (sx, ax), (sy, ay), (sz, az) = segs
    nx, ny, nz = ax.shape[1], ay.shape[1], az.shape[1]
    cell = (sx[:, None, None] * ny + sy[None, :, None]) * nz + sz[None, None, :]  # (X, Y, Z)
    n_cells = nx * ny * nz
    batch_off = torch.arange(b, device=device).view(b, 1, 1, 1) * n_cells
    index = (cell.unsqueeze(0) + batch_off) * num_classes + labels.long()
    counts = torch.bincount(index.flatten(), minlength=b * n_cells * num_classes)
    # Integer counts < 2**24 are exact in float32; three small matmuls apply the separable window
    # averaging with contiguous layouts (z, then y, then x).
    counts = counts.view(b, nx, ny, nz, num_classes).to(torch.float32)
    dist = torch.matmul(az, counts)  # (B, nx, ny, t, C)
    dist = torch.matmul(ay, dist.reshape(b, nx, ny, grid * num_classes))  # (B, nx, t, t*C)
    dist = torch.matmul(ax, dist.reshape(b, nx, grid * grid * num_classes))  # (B, t, t*t*C)
    return dist.reshape(b, grid**3, num_classes)


def labels_to_token_dist(
    labels: torch.Tensor, num_classes: int, grid: int, mode: TokenDistMode = "area"
) -> torch.Tensor:
    """Soft per-token class distributions ``y_dist`` from an integer label map (§3.5 item 3).

    Args:
        labels: (B, X, Y, Z) integer labels in ``[0, num_classes)``.
        num_classes: C, background included.
        grid: tokens per axis ``t``.
        mode: ``area`` = exact class proportions inside each adaptive-average-pool window (SCDL's
            helper, default); ``trilinear`` = trilinear down-sampling of the one-hot
            (align_corners=False, SHTA), clamped at 0.

    Returns:
        (B, t**3, C) float32, every token's vector renormalised to sum to 1.
    """
    if labels.dim() != 4:
        raise ValueError(f"labels must be (B, X, Y, Z), got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    if mode == "area":
        dist = _area_token_dist(labels, num_classes, grid)
    elif mode == "trilinear":
        onehot = torch.zeros(
            labels.shape[0],
            num_classes,
            *labels.shape[1:],
            device=labels.device,
            dtype=torch.float32,
        ).scatter_(1, labels.long().unsqueeze(1), 1.0)
        down = F.interpolate(onehot, size=(grid,) * 3, mode="trilinear", align_corners=False)
        dist = down.clamp_min(0.0).flatten(2).transpose(1, 2)
    else:
        raise ValueError(f"unknown mode {mode!r}; expected area|trilinear")
    return dist / dist.sum(-1, keepdim=True).clamp_min(1e-8)


def class_tokens_from_token_dist(
    tokens: torch.Tensor,
    y_dist: torch.Tensor,
    min_mass: float = 1e-6,
    include_background: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-aware tokens for SAC by mass-weighted masked average pooling (§3.5 item 4).

    For every sample ``b`` and class ``c`` with token mass ``m_bc = sum_l y_dist[b, l, c] > min_mass``:
    ``x_cls = sum_l y_dist[b, l, c] * tokens[b, l] / m_bc`` and ``y_cls = c``.

    Args:
        tokens: (B, L, D) tokens (gradients flow through).
        y_dist: (B, L, C) soft token labels.
        min_mass: classes with at most this much token mass in a sample are skipped.
        include_background: when False, class 0 is never emitted.

    Returns:
        ``x_cls`` (N, D) and ``y_cls`` (N,) long, ordered sample-major then by class; N <= B*C.
    """
    if tokens.shape[:2] != y_dist.shape[:2]:
        raise ValueError(
            f"tokens {tuple(tokens.shape)} and y_dist {tuple(y_dist.shape)} disagree on (B, L)"
        )
    w = y_dist.to(tokens.dtype)
    mass = w.sum(1)  # (B, C)
    sums = torch.einsum("blc,bld->bcd", w, tokens)  # (B, C, D)
    keep = mass > min_mass
    if not include_background:
        keep[:, 0] = False
    classes = torch.arange(y_dist.shape[-1], device=y_dist.device).expand_as(keep)
    x_cls = sums[keep] / mass[keep].unsqueeze(-1)
    return x_cls, classes[keep]
