"""MONAI networks behind the :class:`~scdl.models.contracts.SegmentationBackbone` contract.

Thin subclasses: the layers, their initialisation and the ``state_dict`` keys are MONAI's; the
wrappers only fix the depth (so that :attr:`size_divisor` is a class attribute that
:func:`scdl.config_checks.validate_config` can read without building the network) and split
MONAI's ``forward`` into ``encode`` -> ``decode`` -> ``head`` (``forward`` is exactly that chain).

* :class:`MonaiUNet`: ``monai.networks.nets.DynUNet`` (nnU-Net-style U-Net) with 5 stages and four
  stride-2 down-samplings: patch sides must be multiples of 16.
* :class:`MonaiSwinUNETR`: ``monai.networks.nets.SwinUNETR`` (patch size 2, four patch mergings):
  patch sides must be multiples of 32.

With instance normalisation (both wrappers' default) every side must also be at least twice the
divisor (32 / 64): the deepest map is side / divisor voxels and instance norm needs more than one
(:func:`check_input_size` says so before MONAI fails deep inside).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from monai.networks.nets import DynUNet, SwinUNETR
from monai.utils import optional_import


def _layer_arg(arg: Any) -> Any:
    """A MONAI layer argument (``"instance"`` or ``(name, {kwargs})``) as plain Python: Hydra passes
    lists / maps as OmegaConf containers, which MONAI's ``split_args`` rejects."""
    if arg is None or isinstance(arg, str):
        return arg
    name, kwargs = arg
    return (name, dict(kwargs) if isinstance(kwargs, Mapping) else kwargs)


def _is_instance_norm(norm_name: Any) -> bool:
    name = norm_name if isinstance(norm_name, str) else norm_name[0]
    return str(name).lower() == "instance"


def check_input_size(module: torch.nn.Module, shape: Sequence[int]) -> None:
    """Sides multiples of ``module.size_divisor``; with instance normalisation also at least twice
    that (the bottleneck is side / size_divisor voxels and instance norm, which normalises with the
    statistics of each map in training and in eval, needs more than one). A ValueError naming the
    model, the sizes and the fix otherwise."""
    name, divisor = type(module).__name__, cast(int, module.size_divisor)
    if any(side % divisor for side in shape):
        raise ValueError(
            f"{name}: input sides {tuple(shape)} must be multiples of {divisor} "
            f"(data.module.patch_size, e.g. [{2 * divisor},{2 * divisor},{2 * divisor}])"
        )
    if module.instance_norm and min(shape) < 2 * divisor:
        raise ValueError(
            f"{name}: input sides {tuple(shape)} must be at least {2 * divisor} with instance "
            f"normalisation (the bottleneck is side / {divisor} voxels and instance norm needs "
            f"more than one); use a larger patch (data.module.patch_size="
            f"[{2 * divisor},{2 * divisor},{2 * divisor}]) or model.norm_name=batch"
        )


class MonaiUNet(DynUNet):
    """MONAI's DynUNet as a segmentation backbone: 5 stages with ``base_filters * (1, 2, 4, 8, 16)``
    channels (16 .. 256 for ``base_filters=16``, as the VNet), 3x3x3 kernels, stride-2 down-sampling
    convs and transposed-conv up-sampling with concatenated skips, 1x1x1 output conv.

    Split: ``encode`` = input block + 3 down-sampling blocks + bottleneck (5 maps, the last at
    1/16 resolution with ``16 * base_filters`` channels); ``decode`` = the 4 up-sampling blocks
    (features with ``base_filters`` channels at input resolution); ``head`` = the output block.

    Args:
        in_channels: image channels.
        num_classes: output classes C, background included.
        base_filters: channels of the first stage (= ``feature_channels``).
        norm_name: MONAI normalisation (``instance``, ``batch``, ``group``... or ``[name, {args}]``).
        act_name: MONAI activation (``leakyrelu`` or ``[name, {args}]``).
        dropout: dropout probability in every block (0 = off).
        res_block: residual conv blocks (``UnetResBlock``) instead of plain ones.

    Deep supervision is not exposed (the frameworks expect one logits tensor).
    """

    size_divisor = 16  # 2 ** 4 stride-2 down-samplings; read by scdl.config_checks
    STAGES = 5

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 14,
        base_filters: int = 16,
        norm_name: str | Sequence = ("instance", {"affine": True}),
        act_name: str | Sequence = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        dropout: float = 0.0,
        res_block: bool = False,
    ) -> None:
        filters = [base_filters * 2**i for i in range(self.STAGES)]
        strides = [1] + [2] * (self.STAGES - 1)
        super().__init__(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=num_classes,
            kernel_size=[3] * self.STAGES,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=filters,
            dropout=dropout or None,
            norm_name=_layer_arg(norm_name),
            act_name=_layer_arg(act_name),
            deep_supervision=False,
            res_block=res_block,
        )
        # the SegmentationBackbone contract (scdl.models.contracts): read by the builder
        self.num_classes = num_classes
        self.feature_channels = filters[0]
        self.bottleneck_channels = filters[-1]
        self.instance_norm = _is_instance_norm(norm_name)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_ch, X, Y, Z) -> [(f, X), (2f, X/2), (4f, X/4), (8f, X/8), (16f, X/16)]."""
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            check_input_size(self, x.shape[2:])
        skips = [self.input_block(x)]
        for down in self.downsamples:
            skips.append(down(skips[-1]))
        skips.append(self.bottleneck(skips[-1]))
        return skips

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Skip maps -> decoder features (B, base_filters, X, Y, Z) before the output block."""
        x = skips[-1]
        # DynUNet.upsamples runs deepest first; each joins the skip one level up
        for up, skip in zip(self.upsamples, reversed(skips[:-1]), strict=True):
            x = up(x, skip)
        return x

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, base_filters, X, Y, Z) -> logits (B, C, X, Y, Z)."""
        return self.output_block(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decode(self.encode(x)))


class MonaiSwinUNETR(SwinUNETR):
    """MONAI's SwinUNETR as a segmentation backbone (3D, patch size 2).

    Split: ``encode`` = the Swin transformer's hidden states + the UNETR encoder blocks:
    ``[enc0 (fs, X), enc1 (fs, X/2), enc2 (2fs, X/4), enc3 (4fs, X/8), hidden3 (8fs, X/16),
    bottleneck (16fs, X/32)]`` (``fs`` = ``feature_size``); ``decode`` = the five UNETR up-blocks
    (features with ``fs`` channels at input resolution); ``head`` = the ``out`` block.

    Args:
        in_channels: image channels.
        num_classes: output classes C, background included.
        feature_size: embedding size of the first stage (a multiple of 12; = ``feature_channels``).
        depths: Swin blocks per stage (4 stages).
        num_heads: attention heads per stage.
        window_size: local attention window.
        norm_name: normalisation of the conv blocks (``instance`` as MONAI; ``batch``...).
        drop_rate, attn_drop_rate, dropout_path_rate: dropout, attention dropout, stochastic depth.
        use_checkpoint: gradient checkpointing of the Swin blocks (less memory, slower).
        use_v2: SwinUNETR-V2 (a residual conv block before each Swin stage).

    Every input side must be a multiple of 32 (``2 ** 5``); with instance normalisation it must
    also be at least 64, since the bottleneck is then side / 32 >= 2 voxels.
    """

    size_divisor = 32  # patch embedding (2) + 4 patch mergings; read by scdl.config_checks

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 14,
        feature_size: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        norm_name: str | Sequence = "instance",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        dropout_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        use_v2: bool = False,
    ) -> None:
        if not optional_import("einops")[1]:  # MONAI's SwinUNETR fails only at its first forward
            raise ImportError(
                "MonaiSwinUNETR needs einops (an optional dependency of MONAI's SwinUNETR): "
                "pip install einops"
            )
        super().__init__(
            in_channels=in_channels,
            out_channels=num_classes,
            patch_size=2,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            feature_size=feature_size,
            norm_name=_layer_arg(norm_name),
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            dropout_path_rate=dropout_path_rate,
            use_checkpoint=use_checkpoint,
            spatial_dims=3,
            use_v2=use_v2,
        )
        # the SegmentationBackbone contract (scdl.models.contracts): read by the builder
        self.num_classes = num_classes
        self.feature_channels = feature_size
        self.bottleneck_channels = 16 * feature_size
        self.instance_norm = _is_instance_norm(norm_name)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_ch, X, Y, Z) -> [enc0, enc1, enc2, enc3, hidden3, bottleneck] (see class doc)."""
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            check_input_size(self, x.shape[2:])
        hidden = self.swinViT(x, self.normalize)
        return [
            self.encoder1(x),
            self.encoder2(hidden[0]),
            self.encoder3(hidden[1]),
            self.encoder4(hidden[2]),
            hidden[3],
            self.encoder10(hidden[4]),
        ]

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Skip maps -> decoder features (B, feature_size, X, Y, Z) before the ``out`` block."""
        enc0, enc1, enc2, enc3, hidden3, bottleneck = skips
        x = self.decoder5(bottleneck, hidden3)
        x = self.decoder4(x, enc3)
        x = self.decoder3(x, enc2)
        x = self.decoder2(x, enc1)
        return self.decoder1(x, enc0)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, feature_size, X, Y, Z) -> logits (B, C, X, Y, Z)."""
        return self.out(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decode(self.encode(x)))
