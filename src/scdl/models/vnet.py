"""VNet backbone in the UA-MT / DHC / GALoss style (docs/method.md §2.1).

Encoder: 5 stages of 3x3x3 conv blocks (1, 2, 3, 3, 3 convs) with 16, 32, 64, 128, 256 channels
(for ``base_filters=16``), stride-2 2x2x2 conv down-sampling. Decoder: stride-2 transposed-conv
up-sampling, skip connections by *addition*, conv blocks (3, 3, 2, 1 convs), then a 1x1x1 classifier.
The decoder output before the classifier (``x9``, ``base_filters`` channels at input resolution) is
exposed by :meth:`VNet.forward_features`: SCDL builds its tokens from it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Norm = Literal["batchnorm", "instancenorm", "groupnorm", "none"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm3d(channels)
    if kind == "instancenorm":
        return nn.InstanceNorm3d(channels)
    if kind == "groupnorm":
        return nn.GroupNorm(num_groups=min(16, channels), num_channels=channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(
        f"unknown normalization {kind!r}; expected batchnorm|instancenorm|groupnorm|none"
    )


class ConvBlock(nn.Sequential):
    """``n_convs`` x (3x3x3 conv -> norm -> ReLU); the first conv maps ``c_in`` -> ``c_out``."""

    def __init__(self, n_convs: int, c_in: int, c_out: int, norm: Norm) -> None:
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [
                nn.Conv3d(c_in if i == 0 else c_out, c_out, 3, padding=1),
                _norm(norm, c_out),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class DownBlock(nn.Sequential):
    """2x2x2 stride-2 conv -> norm -> ReLU: halves the resolution, ``c_in`` -> ``c_out``."""

    def __init__(self, c_in: int, c_out: int, norm: Norm) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, 2, stride=2), _norm(norm, c_out), nn.ReLU(inplace=True)
        )


class UpBlock(nn.Sequential):
    """2x2x2 stride-2 transposed conv -> norm -> ReLU: doubles the resolution."""

    def __init__(self, c_in: int, c_out: int, norm: Norm) -> None:
        super().__init__(
            nn.ConvTranspose3d(c_in, c_out, 2, stride=2), _norm(norm, c_out), nn.ReLU(inplace=True)
        )


class _DecoderLayers(nn.Module):
    """The decoder layers of :func:`_decoder_layers`, set by name (declared for type checkers)."""

    up5: nn.Module
    block6: nn.Module
    up6: nn.Module
    block7: nn.Module
    up7: nn.Module
    block8: nn.Module
    up8: nn.Module
    block9: nn.Module
    dropout: nn.Module
    out_conv: nn.Module


class VNet(_DecoderLayers):
    """VNet for 3D segmentation.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: output classes C, background included.
        base_filters: channels of the first stage (16 in UA-MT / GALoss, 32 in DHC).
        normalization: normalisation after every conv.
        dropout: dropout probability on the bottleneck and on the last decoder features (0 = off).
        init: ``kaiming`` (GA-CPS model A) or ``xavier`` (model B) normal init of the conv weights.

    Input spatial sizes must be divisible by 16 (four down-samplings).
    """

    size_divisor = 16  # four 2x down-samplings (SegmentationBackbone contract)

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 14,
        base_filters: int = 16,
        normalization: Norm = "batchnorm",
        dropout: float = 0.0,
        init: Literal["kaiming", "xavier", "default"] = "kaiming",
    ) -> None:
        super().__init__()
        f = base_filters
        self.num_classes = num_classes
        # the SegmentationBackbone contract (scdl.models.contracts): read by the builder
        self.feature_channels = f
        self.bottleneck_channels = 16 * f
        self.block1 = ConvBlock(1, in_channels, f, normalization)
        self.down1 = DownBlock(f, 2 * f, normalization)
        self.block2 = ConvBlock(2, 2 * f, 2 * f, normalization)
        self.down2 = DownBlock(2 * f, 4 * f, normalization)
        self.block3 = ConvBlock(3, 4 * f, 4 * f, normalization)
        self.down3 = DownBlock(4 * f, 8 * f, normalization)
        self.block4 = ConvBlock(3, 8 * f, 8 * f, normalization)
        self.down4 = DownBlock(8 * f, 16 * f, normalization)
        self.block5 = ConvBlock(3, 16 * f, 16 * f, normalization)

        for name, layer in _decoder_layers(f, num_classes, normalization, dropout).items():
            setattr(self, name, layer)  # up5 ... block9, dropout, out_conv (state-dict names)
        self._decoder_args = (f, num_classes, normalization, dropout, init)
        self._init_weights(init)

    def _init_weights(self, init: str) -> None:
        init_conv_weights(self, init)

    def make_decoder(self) -> VNetDecoder:
        """A new decoder + head of this network's shape and init (own weights): skip maps of
        :meth:`encode` -> logits. For methods with extra decoders on one encoder (DST)."""
        return VNetDecoder(*self._decoder_args)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder. ``x``: (B, in_ch, X, Y, Z) -> [x1 (f, X), x2 (2f, X/2), x3, x4, x5 (16f, X/16)]."""
        x1 = self.block1(x)
        x2 = self.block2(self.down1(x1))
        x3 = self.block3(self.down2(x2))
        x4 = self.block4(self.down3(x3))
        x5 = self.dropout(self.block5(self.down4(x4)))
        return [x1, x2, x3, x4, x5]

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decoder. Returns the feature map x9: (B, base_filters, X, Y, Z), before the classifier."""
        return _decode(self, skips)[-1]

    def decode_stages(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every decoder stage's output, deep to shallow: x6 (8f, X/8), x7 (4f, X/4), x8 (2f, X/2),
        x9 (f, X) = :meth:`decode` (deep supervision, URPC)."""
        return _decode(self, skips)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of :meth:`decode_stages`' maps."""
        f = self.feature_channels
        return (8 * f, 4 * f, 2 * f, f)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Classifier: (B, base_filters, X, Y, Z) -> logits (B, C, X, Y, Z)."""
        return self.out_conv(features)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(logits (B, C, X, Y, Z), features x9 (B, base_filters, X, Y, Z))``."""
        features = self.decode(self.encode(x))
        return self.head(features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, in_ch, X, Y, Z) -> logits (B, C, X, Y, Z)."""
        return self.forward_features(x)[0]


class VNetDecoder(_DecoderLayers):
    """The VNet decoder and classifier alone (:meth:`VNet.make_decoder`): skip maps
    [x1 ... x5] of :meth:`VNet.encode` -> logits (B, C, X, Y, Z)."""

    def __init__(
        self,
        base_filters: int,
        num_classes: int,
        normalization: Norm = "batchnorm",
        dropout: float = 0.0,
        init: Literal["kaiming", "xavier", "default"] = "kaiming",
    ) -> None:
        super().__init__()
        for name, layer in _decoder_layers(
            base_filters, num_classes, normalization, dropout
        ).items():
            setattr(self, name, layer)
        init_conv_weights(self, init)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.out_conv(_decode(self, skips)[-1])


def _decoder_layers(f: int, num_classes: int, norm: Norm, dropout: float) -> dict[str, nn.Module]:
    """The decoder's layers in construction order (the order fixes the random initial weights)."""
    return {
        "up5": UpBlock(16 * f, 8 * f, norm),
        "block6": ConvBlock(3, 8 * f, 8 * f, norm),
        "up6": UpBlock(8 * f, 4 * f, norm),
        "block7": ConvBlock(3, 4 * f, 4 * f, norm),
        "up7": UpBlock(4 * f, 2 * f, norm),
        "block8": ConvBlock(2, 2 * f, 2 * f, norm),
        "up8": UpBlock(2 * f, f, norm),
        "block9": ConvBlock(1, f, f, norm),
        "dropout": nn.Dropout3d(dropout) if dropout > 0 else nn.Identity(),
        "out_conv": nn.Conv3d(f, num_classes, 1),
    }


def _decode(m: _DecoderLayers, skips: list[torch.Tensor]) -> list[torch.Tensor]:
    """The decoder pass of a module holding :func:`_decoder_layers` -> the stages x6, x7, x8 and
    the features x9 (after dropout)."""
    x1, x2, x3, x4, x5 = skips
    x6 = m.block6(m.up5(x5) + x4)
    x7 = m.block7(m.up6(x6) + x3)
    x8 = m.block8(m.up7(x7) + x2)
    x9 = m.block9(m.up8(x8) + x1)
    return [x6, x7, x8, m.dropout(x9)]


def init_conv_weights(module: nn.Module, init: str) -> None:
    """``kaiming`` / ``xavier`` normal conv weights, BatchNorm 1 / 0; ``default`` leaves torch's."""
    if init == "default":
        return
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            if init == "kaiming":
                nn.init.kaiming_normal_(m.weight)
            elif init == "xavier":
                nn.init.xavier_normal_(m.weight)
            else:
                raise ValueError(f"unknown init {init!r}; expected kaiming|xavier|default")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
