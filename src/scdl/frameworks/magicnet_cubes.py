"""MagicNet's cube operations as pure tensor functions (docs/method.md §4.3).

A volume (B, C, X, Y, Z) is cut into ``n`` cubes per axis, each of side (X/n, Y/n, Z/n). Cube
positions are numbered in C order over the cube grid, ``k = i * n^2 + j * n + l`` for the cube at
(i, j, l) along (X, Y, Z) (the last axis fastest: the order of the released ``get_patch_list``).

* cross-image partition and recovery (:func:`partition_cross_image`, :func:`recover_cross_image`):
  for every cube position an independent random permutation of the batch mixes the volumes; the
  features of the mixed volumes are un-mixed cube-wise by the inverse permutations;
* within-image partition (:func:`split_cubes`, :func:`merge_cubes`): every volume's n^3 cubes as a
  batch of their own, and back;
* location labels (:func:`shuffle_cubes`): a random order of the n^3 cubes and, for each shuffled
  slot, the position the cube came from.

No Python loop runs over voxels or cube positions; randomness comes from the given
``torch.Generator`` (or the global RNG).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_cube_grid(
    spatial_shape: Sequence[int], n: int, size_divisor: int = 1
) -> tuple[int, int, int]:
    """Cube side per axis for ``n`` cubes per axis.

    Args:
        spatial_shape: (X, Y, Z) of the patch.
        n: cubes per axis.
        size_divisor: every cube side must also be a multiple of this (the backbone's
            ``size_divisor`` when the cubes go through the encoder on their own).

    Raises:
        ValueError: a side is not divisible by ``n`` (or a cube side by ``size_divisor``), naming
            ``data.module.patch_size`` and ``n``.
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 3:
        raise ValueError(f"expected 3 spatial sizes, got {shape}")
    if n < 1:
        raise ValueError(f"cubes per axis n must be >= 1, got {n}")
    if any(s % n for s in shape):
        raise ValueError(
            f"data.module.patch_size {list(shape)} is not divisible by the number of cubes per axis "
            f"n={n} on every axis"
        )
    cube = tuple(s // n for s in shape)
    if any(c % size_divisor for c in cube):
        raise ValueError(
            f"data.module.patch_size {list(shape)} with n={n} cubes per axis gives cubes of "
            f"{list(cube)}, not multiples of the backbone's size_divisor {size_divisor}"
        )
    return cube  # type: ignore[return-value]


def _to_cube_grid(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (n^3, B, C, X/n, Y/n, Z/n), cube positions in C order."""
    b, c = x.shape[:2]
    sx, sy, sz = check_cube_grid(x.shape[2:], n)
    g = x.reshape(b, c, n, sx, n, sy, n, sz)
    return g.permute(2, 4, 6, 0, 1, 3, 5, 7).reshape(n**3, b, c, sx, sy, sz)


def _from_cube_grid(g: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`_to_cube_grid`: (n^3, B, C, sx, sy, sz) -> (B, C, n sx, n sy, n sz)."""
    _, b, c, sx, sy, sz = g.shape
    x = g.reshape(n, n, n, b, c, sx, sy, sz).permute(3, 4, 0, 5, 1, 6, 2, 7)
    return x.reshape(b, c, n * sx, n * sy, n * sz)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device):
    """Uniform draws from ``generator`` (on its own device) or the global RNG, moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def partition_cross_image(
    x: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-image partition: mix the batch cube-wise.

    Args:
        x: (B, C, X, Y, Z).
        n: cubes per axis.
        generator: RNG of the permutations (None = global RNG).

    Returns:
        ``(mixed, perms)``: ``perms`` (n^3, B) long holds one permutation of the batch per cube
        position, and cube k of ``mixed[b]`` is cube k of ``x[perms[k, b]]``.
    """
    grid = _to_cube_grid(x, n)
    perms = torch.argsort(_rand((n**3, x.shape[0]), generator, x.device), dim=1)
    mixed = torch.take_along_dim(grid, perms.view(*perms.shape, 1, 1, 1, 1), dim=1)
    return _from_cube_grid(mixed, n), perms


def recover_cross_image(
    features_of_mixed: torch.Tensor, perms: torch.Tensor, n: int
) -> torch.Tensor:
    """Cross-image recovery: undo :func:`partition_cross_image` on a map of the mixed batch.

    Args:
        features_of_mixed: (B, F, X, Y, Z), any channel count, the spatial size of the partitioned
            input.
        perms: (n^3, B) from :func:`partition_cross_image`.
        n: cubes per axis.

    Returns:
        (B, F, X, Y, Z) whose cube k of sample b is cube k of ``features_of_mixed[inv[k, b]]``, with
        ``inv[k]`` the inverse permutation of ``perms[k]``, i.e. it is back at the volume it was cut
        from.
    """
    if perms.shape != (n**3, features_of_mixed.shape[0]):
        raise ValueError(
            f"perms {tuple(perms.shape)} do not match n={n} and batch {features_of_mixed.shape[0]}"
        )
    grid = _to_cube_grid(features_of_mixed, n)
    inverse = torch.argsort(perms, dim=1).to(features_of_mixed.device)
    rec = torch.take_along_dim(grid, inverse.view(*inverse.shape, 1, 1, 1, 1), dim=1)
    return _from_cube_grid(rec, n)


def split_cubes(x: torch.Tensor, n: int) -> torch.Tensor:
    """Within-image partition: (B, C, X, Y, Z) -> (B n^3, C, X/n, Y/n, Z/n); row ``b n^3 + k`` is
    cube k of volume b."""
    grid = _to_cube_grid(x, n)  # (n^3, B, C, ...)
    return grid.transpose(0, 1).reshape(-1, *grid.shape[2:])


def merge_cubes(cubes: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`split_cubes`: (B n^3, C, sx, sy, sz) -> (B, C, n sx, n sy, n sz)."""
    k = n**3
    if cubes.shape[0] % k:
        raise ValueError(f"{cubes.shape[0]} cubes are not a multiple of n^3 = {k}")
    grid = cubes.reshape(cubes.shape[0] // k, k, *cubes.shape[1:]).transpose(0, 1)
    return _from_cube_grid(grid, n)


def shuffle_cubes(
    cubes: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random order of the cubes of one volume for the location task.

    Args:
        cubes: (n^3, ...), e.g. the bottleneck maps of one volume's cubes (rows of
            :func:`split_cubes`).

    Returns:
        ``(shuffled, labels)``: ``shuffled[k] = cubes[labels[k]]``, so ``labels`` (n^3,) long is the
        location target of each shuffled row.
    """
    labels = torch.argsort(_rand((cubes.shape[0],), generator, cubes.device))
    return cubes[labels], labels


def transpose_cube_grid(x: torch.Tensor, n: int) -> torch.Tensor:
    """Moves the cube at grid position (i, j, l) to (l, j, i) (cube contents unchanged).

    The released within-image recovery (MagicNet / GALoss / SCDL ``cube_losses.unmix_tensor``) puts
    the cube cut at list index ``9 i + 3 j + l`` (``get_patch_list``, last axis fastest) at the
    position whose index is ``i + 3 j + 9 l`` (first axis fastest), so its reassembled volume is
    ``transpose_cube_grid(merge_cubes(cubes, n), n)``: 18 of the 27 cubes sit at another place than
    where they were cut. Needs equal cube sides along X and Z. An involution.
    """
    b, c = x.shape[:2]
    sx, sy, sz = check_cube_grid(x.shape[2:], n)
    if sx != sz:
        raise ValueError(f"cube sides along X and Z differ ({sx} vs {sz}); cannot transpose")
    grid = _to_cube_grid(x, n).reshape(n, n, n, b, c, sx, sy, sz).transpose(0, 2)
    return _from_cube_grid(grid.reshape(n**3, b, c, sx, sy, sz), n)
