"""What a segmentation backbone must offer to the frameworks and to plug-ins such as SCDL.

A backbone is an ``nn.Module`` split into encoder, decoder and classifier head, so that a plug-in
can read the decoder features (SCDL's tokens), change what the head sees (the ``head`` prior) or
inject into the bottleneck (the ``bottleneck`` prior), and a framework can run the pieces
separately. The builder (:mod:`scdl.build`) reads the channel counts from the attributes; configs
never interpolate a backbone's parameter names.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SegmentationBackbone(Protocol):
    """Encoder -> decoder -> head; ``forward(x) == head(decode(encode(x)))``.

    Attributes:
        num_classes: C, classes including background.
        feature_channels: F, channels of the decoder features that :meth:`head` consumes.
        bottleneck_channels: channels of the deepest encoder map (``encode(x)[-1]``).
        size_divisor: every input side must be a multiple of this (e.g. 16 for four 2x
            down-samplings; 32 for a Swin transformer).
    """

    num_classes: int
    feature_channels: int
    bottleneck_channels: int
    size_divisor: int

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_channels, X, Y, Z) -> skip maps, shallow to deep; the last is the bottleneck
        (B, bottleneck_channels, X', Y', Z')."""
        ...

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Skip maps -> decoder features (B, feature_channels, X, Y, Z) at input resolution."""
        ...

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, feature_channels, X, Y, Z) -> logits (B, C, X, Y, Z)."""
        ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, X, Y, Z) -> logits (B, C, X, Y, Z)."""
        ...


@runtime_checkable
class DeepSupervisionBackbone(SegmentationBackbone, Protocol):
    """A backbone whose decoder stages can be read one by one (URPC's multi-scale outputs).

    Attributes:
        stage_channels: channels of each stage map, deep to shallow.
    """

    stage_channels: tuple[int, ...]

    def decode_stages(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Skip maps -> every decoder stage's map (B, stage_channels[i], X_i, Y_i, Z_i), deep to
        shallow; the last is :meth:`decode`'s output."""
        ...


@runtime_checkable
class DecoderFactoryBackbone(SegmentationBackbone, Protocol):
    """A backbone that can build further decoders for its own encoder (DST's extra decoders)."""

    def make_decoder(self) -> torch.nn.Module:
        """A new decoder + head with its own weights: skip maps of :meth:`encode` -> logits
        (B, C, X, Y, Z)."""
        ...


def check_backbone(module: object) -> SegmentationBackbone:
    """``module`` if it satisfies :class:`SegmentationBackbone`, else a TypeError naming what is
    missing."""
    missing = [
        name
        for name in (
            "num_classes",
            "feature_channels",
            "bottleneck_channels",
            "size_divisor",
            "encode",
            "decode",
            "head",
        )
        if not hasattr(module, name)
    ]
    if missing:
        raise TypeError(
            f"{type(module).__name__} is not a segmentation backbone: it lacks {missing} "
            "(see scdl.models.contracts.SegmentationBackbone)"
        )
    return module  # type: ignore[return-value]
