"""The contract between a framework and a plug-in (SCDL is one).

A framework calls its plug-in at three places, through :class:`~scdl.frameworks.base.
SemiSupervisedModule` (frameworks never branch on what the plug-in is):

* training: :meth:`FrameworkPlugin.train_step` gets the host backbone, its encoder maps and decoder
  features of the joint batch (labeled samples first) and the labels; it returns the logits the
  framework supervises, an extra loss and values to log;
* inference: :meth:`FrameworkPlugin.inference_logits` when :attr:`changes_inference` (e.g. SCDL's
  ``head`` prior), else the framework uses the backbone's head itself;
* optimisation: :meth:`FrameworkPlugin.parameter_group`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from scdl.models.contracts import SegmentationBackbone


@dataclass
class PluginStep:
    """One training iteration's output of a plug-in.

    Attributes:
        logits: (B, C, X, Y, Z) logits of the host for the whole batch (labeled first).
        loss: scalar added to the framework's loss (None: nothing to add).
        logs: scalars to log (``train/...`` keys).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class FrameworkPlugin(Protocol):
    """A module plugged into a framework's host backbone (see the module docstring)."""

    num_classes: int
    changes_inference: bool

    def train_step(
        self,
        backbone: SegmentationBackbone,
        skips: list[torch.Tensor],
        features: torch.Tensor,
        labels: torch.Tensor,
        sup_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> PluginStep:
        """``skips`` = ``backbone.encode(x)``, ``features`` = ``backbone.decode(skips)``
        (B, F, X, Y, Z); ``labels`` (Bl, X, Y, Z) of the first Bl samples; ``sup_loss`` the
        framework's supervised loss (for auxiliary supervised branches)."""
        ...

    def inference_logits(
        self, backbone: SegmentationBackbone, features: torch.Tensor
    ) -> torch.Tensor:
        """Decoder features (B, F, X, Y, Z) -> logits (B, C, X, Y, Z) at inference."""
        ...

    def parameter_group(self, base_lr: float | None = None) -> dict:
        """The plug-in's optimiser parameter group."""
        ...


@runtime_checkable
class PluginHost(Protocol):
    """What a framework offers a plug-in (implemented once by
    :class:`~scdl.frameworks.base.SemiSupervisedModule`; a framework only names its host)."""

    plugin: FrameworkPlugin | None

    @property
    def plugin_host(self) -> SegmentationBackbone:
        """The backbone the plug-in attaches to (mean teacher: the student; CPS: network A)."""
        ...

    def plugin_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, X, Y, Z) -> the host's decoder features (B, F, X, Y, Z)."""
        ...

    def host_train_step(
        self,
        net: SegmentationBackbone,
        skips: list[torch.Tensor],
        features: torch.Tensor,
        labels: torch.Tensor,
    ) -> PluginStep:
        """The logits the framework supervises (labeled first) plus the plug-in's loss and logs."""
        ...

    def host_inference_logits(
        self, net: SegmentationBackbone, features: torch.Tensor
    ) -> torch.Tensor:
        """Inference logits (B, C, X, Y, Z), with the plug-in where it changes inference."""
        ...
