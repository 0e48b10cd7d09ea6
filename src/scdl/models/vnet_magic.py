"""MagicNet's VNet (``VNet_Magic`` of MagicNet / GALoss / SCDL ``networks/magicnet.py``, docs/method.md
§2.2): the VNet of :mod:`scdl.models.vnet` with non-affine InstanceNorm and PyTorch's default
initialisation, plus MagicNet's cube-location head.

What the released module has and where it lives here:

* encoder / decoder / ``out_conv``: the :class:`~scdl.models.vnet.VNet` layers (same topology, same
  parameter shapes; only the names differ, see :mod:`scdl.models.magicnet_weights`);
* ``fc_layer``: the location head ``Linear(fc_in -> 4096) -> BatchNorm1d(4096) -> LeakyReLU(0.2) ->
  Linear(4096 -> n^3)``, applied to the flattened bottleneck of one cube. ``fc_in`` is computed from
  the cube size: ``16 f * prod(cube_side / 16)`` (2048 for 32^3 cubes and ``f = 16``; 256 for the
  16^3 cubes of a 48^3 patch, whose bottleneck is 1^3: InstanceNorm cannot normalise a 1^3 map, so
  such cubes need another ``normalization``, e.g. ``batchnorm``, and are rejected otherwise);
* the decoder prior hooks ``p12, p24, p48, p96`` (bias-free 1x1x1 convolutions ``prior_channels ->``
  8f, 4f, 2f, f that add a resized prior map after each skip addition): optional here
  (``decoder_prior_channels``, default off) as ``decoder_priors.0`` ... ``.3``; no released path
  uses them (the Synapse inference uses ``prior_to_feat``, Prior5 ``prior_proj5``);
* ``prior_to_feat`` (256 -> f) and Prior5's ``prior_proj5`` (512 -> 16f) are the SCDL plug-in's
  ``prior_to_feat`` / ``prior_to_bottleneck`` (:class:`scdl.plugins.scdl_plugin.SCDLPlugin`), not
  backbone layers; ``x4_to_xdim`` (128 -> 16) is never used by the released code and is not built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from scdl.models.vnet import Norm, VNet

LOCATION_HIDDEN = 4096  # MagicNet's hidden width of the location head


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"expected an int or 3 ints, got {value!r}")
    return out


def location_head_in_features(
    bottleneck_channels: int, cube_size: int | Sequence[int], size_divisor: int = 16
) -> int:
    """Input size of the location head: the flattened bottleneck of one cube,
    ``bottleneck_channels * prod(cube_side / size_divisor)``.

    Raises:
        ValueError: a cube side is not a multiple of ``size_divisor`` (the encoder could not
            down-sample it).
    """
    sides = _triple(cube_size)
    bad = [s for s in sides if s <= 0 or s % size_divisor]
    if bad:
        raise ValueError(
            f"cube size {sides} must be a positive multiple of the backbone's size_divisor "
            f"{size_divisor} on every axis (cube side = data.module.patch_size / cubes per axis)"
        )
    n = bottleneck_channels
    for s in sides:
        n *= s // size_divisor
    return n


class VNetMagic(VNet):
    """MagicNet VNet: a :class:`~scdl.models.vnet.VNet` with the cube-location head.

    Args:
        in_channels, num_classes, base_filters, dropout: as :class:`~scdl.models.vnet.VNet`
            (MagicNet: 1, C, 16, no dropout).
        normalization: ``instancenorm`` (MagicNet; non-affine, no running statistics, so no
            parameters) or any :class:`~scdl.models.vnet.VNet` normalisation.
        init: ``default`` (PyTorch's, as MagicNet), ``kaiming`` or ``xavier``.
        cube_size: side(s) of one cube (32 for a 96^3 patch cut 3 x 3 x 3; 16 for 48^3). Sets the
            location head's input size; every side must be a multiple of 16.
        cubes_per_axis: n, so the location head has n^3 outputs (27).
        decoder_prior_channels: channels of the prior map of the decoder hooks (256 in the released
            model); None (default) = no hooks.
        location_hidden: hidden width of the location head (4096).

    Shapes (``f = base_filters``): ``encode`` (B, 1, X, Y, Z) -> [x1 .. x5], x5 (B, 16f, X/16, ...);
    ``decode`` -> (B, f, X, Y, Z); ``head`` -> (B, C, X, Y, Z); ``locate`` (N, 16f, c/16, ...) for
    cubes of side c -> (N, n^3) location logits.
    """

    size_divisor = 16  # four 2x down-samplings (SegmentationBackbone contract)

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 14,
        base_filters: int = 16,
        normalization: Norm = "instancenorm",
        dropout: float = 0.0,
        init: Literal["kaiming", "xavier", "default"] = "default",
        cube_size: int | Sequence[int] = 32,
        cubes_per_axis: int = 3,
        decoder_prior_channels: int | None = None,
        location_hidden: int = LOCATION_HIDDEN,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            num_classes=num_classes,
            base_filters=base_filters,
            normalization=normalization,
            dropout=dropout,
            init="default",  # the subclass layers are built first, then initialised together
        )
        f = base_filters
        self.cube_size = _triple(cube_size)
        self.cubes_per_axis = int(cubes_per_axis)
        if self.cubes_per_axis < 1:
            raise ValueError(f"cubes_per_axis must be >= 1, got {cubes_per_axis}")
        self.location_in_features = location_head_in_features(
            self.bottleneck_channels, self.cube_size, self.size_divisor
        )
        if (
            normalization == "instancenorm"
            and self.location_in_features == self.bottleneck_channels
        ):
            # InstanceNorm of a 1^3 map is undefined (PyTorch raises; it would be all zeros anyway)
            raise ValueError(
                f"cubes of {list(self.cube_size)} give a 1^3 bottleneck, which InstanceNorm cannot "
                "normalise: use larger cubes (fewer cubes per axis or a larger "
                "data.module.patch_size, e.g. 96^3 with 3 cubes per axis) or another normalization"
            )
        self.fc_layer = nn.Sequential(
            nn.Linear(self.location_in_features, location_hidden),
            nn.BatchNorm1d(location_hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(location_hidden, self.cubes_per_axis**3),
        )
        self.decoder_prior_channels = decoder_prior_channels
        self.decoder_priors = (
            nn.ModuleList(
                nn.Conv3d(decoder_prior_channels, c, 1, bias=False)
                for c in (8 * f, 4 * f, 2 * f, f)
            )
            if decoder_prior_channels
            else None
        )
        self._init_weights(init)

    @staticmethod
    def _add_prior(x: torch.Tensor, prior_map: torch.Tensor, proj: nn.Module) -> torch.Tensor:
        p = proj(prior_map.to(x.dtype))
        if p.shape[2:] != x.shape[2:]:
            p = F.interpolate(p, size=x.shape[2:], mode="trilinear", align_corners=False)
        return x + p

    def decode(
        self, skips: list[torch.Tensor], prior_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decoder: skips -> features x9 (B, f, X, Y, Z). With ``prior_map`` (B, P, t, t, t) (needs
        ``decoder_prior_channels = P``), each stage's ``up(x) + skip`` also gets
        ``interp(conv_i(prior_map))``, as the released decoder hooks p12 ... p96."""
        if prior_map is None:
            return super().decode(skips)
        if self.decoder_priors is None:
            raise ValueError("this VNetMagic has no decoder prior hooks (decoder_prior_channels)")
        x1, x2, x3, x4, x5 = skips
        hooks = self.decoder_priors
        x = self.block6(self._add_prior(self.up5(x5) + x4, prior_map, hooks[0]))
        x = self.block7(self._add_prior(self.up6(x) + x3, prior_map, hooks[1]))
        x = self.block8(self._add_prior(self.up7(x) + x2, prior_map, hooks[2]))
        x = self.block9(self._add_prior(self.up8(x) + x1, prior_map, hooks[3]))
        return self.dropout(x)

    def locate(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """Cube-location logits: bottleneck maps of N cubes (N, 16f, c/16, c/16, c/16) -> (N, n^3).

        The head holds a BatchNorm1d: in train mode N must be > 1 (MagicNet feeds the n^3 cubes of
        one volume at a time).
        """
        flat = bottleneck.flatten(1)
        if flat.shape[1] != self.location_in_features:
            raise ValueError(
                f"location head expects {self.location_in_features} features per cube (cube size "
                f"{self.cube_size}), got bottleneck {tuple(bottleneck.shape)}"
            )
        return self.fc_layer(flat)
