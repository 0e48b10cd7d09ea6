"""SCDL as a plug-in of a segmentation framework: token plumbing, loss weighting and prior feedback.

Given the decoder feature map of a VNet-style backbone (``x9``, (B, D, X, Y, Z)) and the labels of the
first ``Bl`` samples, :meth:`SCDLPlugin.training_terms` builds the SCDL inputs (docs/method.md §3.5):

* tokens: adaptive average pooling of the features to a t^3 grid -> (B, L = t^3, D);
* soft token labels of the labeled samples: one-hot labels pooled to the grid (``area`` = exact
  class proportions, or ``trilinear``) -> (Bl, L, C);
* class tokens for SAC: mass-weighted masked means of the labeled tokens -> (N, D), (N,);

runs SCDL on the labeled tokens (soft-label weights + SAC) and, when ``use_unlabeled``, on the
unlabeled tokens (detached bidirectional-assignment weights), and returns the weighted auxiliary loss
``w_aux * (w_proxy * L_proxy + w_sac * L_SAC + w_kl * L_KL)`` (§3.6) plus the prior tokens.

Prior feedback (§2.2-2.3), ``prior_feedback``:

* ``head`` (default; Synapse GA-MagicNet + SCDL): prior tokens (B, L, z) -> grid (B, z, t, t, t) ->
  1x1x1 conv z -> D (no bias) -> trilinear up-sampling to the feature size -> added to the decoder
  features before the classifier. Used at training and at inference (:meth:`head_with_prior`).
* ``bottleneck`` (AMOS GA-MagicNet + SCDL "Prior5"): an auxiliary training branch only: the
  concatenation of the prior tokens and the mean noisy embedding (2z channels) -> 1x1x1 conv 2z ->
  bottleneck channels, resized to the bottleneck and added to it, then a second decoder pass whose
  logits are supervised on the labeled voxels. Inference is prior-free, as released.
* ``none``: SCDL only shapes the features through its losses (GA-CPS + SCDL; inference prior-free).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from scdl.frameworks.plugin import PluginStep
from scdl.models.contracts import SegmentationBackbone
from scdl.models.scdl import (
    SCDL,
    class_tokens_from_token_dist,
    feature_map_to_tokens,
    labels_to_token_dist,
    tokens_to_grid,
)
from scdl.utils.schedules import sigmoid_rampup

PriorFeedback = Literal["head", "bottleneck", "none"]
YDistMode = Literal["area", "trilinear"]


@dataclass
class SCDLTerms:
    """What one training iteration of SCDL yields (all losses float32 scalars)."""

    aux_loss: torch.Tensor  # w_aux * (w_proxy L_proxy + w_sac L_SAC + w_kl L_KL)
    proxy_loss: torch.Tensor
    sac_loss: torch.Tensor
    kl_loss: torch.Tensor
    prior_tokens: torch.Tensor  # (B, L, z), labeled samples first
    mean_embedding_samples: torch.Tensor | None  # (B, L, z) mean over E noisy samples
    labeled_token_dist: torch.Tensor  # (Bl, L, C)


class SCDLPlugin(nn.Module):
    """SCDL attached to a backbone.

    Args:
        scdl: the :class:`~scdl.models.scdl.SCDL` module (its ``x_dim`` = backbone feature channels).
        token_grid: t, tokens per axis (12 as in the released inference).
        ydist_mode: ``area`` (exact proportions, default) or ``trilinear`` soft token labels.
        use_unlabeled: also run SCDL on the unlabeled tokens (bi_sim weights); False = SHTA behaviour.
        w_aux, w_proxy, w_sac, w_kl: loss weights (§3.6 defaults 0.1, 0.3, 0.1, 0.02).
        prior_feedback: ``head``, ``bottleneck`` or ``none`` (see module docstring).
        bottleneck_channels: channels of the backbone bottleneck (``bottleneck`` prior only).
        lr_scale: learning rate of the SCDL parameter group relative to the backbone's.
        detach_prior: stop the segmentation loss at the prior tokens, so the proxies and the token
            encoder learn from the SCDL losses only (the prior projection still learns). Not known
            for the released training (docs/method.md §8.6); default False (not detached).
    """

    def __init__(
        self,
        scdl: SCDL,
        token_grid: int = 12,
        ydist_mode: YDistMode = "area",
        use_unlabeled: bool = True,
        w_aux: float = 0.1,
        w_proxy: float = 0.3,
        w_sac: float = 0.1,
        w_kl: float = 0.02,
        prior_feedback: PriorFeedback = "head",
        bottleneck_channels: int = 256,
        lr_scale: float = 1.0,
        detach_prior: bool = False,
        aux_rampup_steps: int = 0,
    ) -> None:
        super().__init__()
        if aux_rampup_steps < 0:
            raise ValueError(f"aux_rampup_steps must be >= 0, got {aux_rampup_steps}")
        # 0 (released): the SCDL terms weigh w_aux from the first step; N: sigmoid ramp 0 -> 1 over
        # the first N optimiser steps (the host sets training_step_index before every train_step)
        self.aux_rampup_steps = int(aux_rampup_steps)
        self.training_step_index = 0
        # the choices are the annotations' (config_checks reads the same Literals)
        if prior_feedback not in get_args(PriorFeedback):
            choices = "|".join(get_args(PriorFeedback))
            raise ValueError(f"prior_feedback must be {choices}, got {prior_feedback!r}")
        if ydist_mode not in get_args(YDistMode):
            choices = "|".join(get_args(YDistMode))
            raise ValueError(f"ydist_mode must be {choices}, got {ydist_mode!r}")
        self.scdl = scdl
        self.token_grid = int(token_grid)
        self.ydist_mode = ydist_mode
        self.use_unlabeled = use_unlabeled
        self.w_aux, self.w_proxy, self.w_sac, self.w_kl = w_aux, w_proxy, w_sac, w_kl
        self.prior_feedback = prior_feedback
        self.lr_scale = lr_scale
        self.detach_prior = detach_prior
        z = scdl.z_dim
        self.prior_to_feat = (
            nn.Conv3d(z, scdl.x_dim, 1, bias=False) if prior_feedback == "head" else None
        )
        self.prior_to_bottleneck = (
            nn.Conv3d(2 * z, bottleneck_channels, 1, bias=False)
            if prior_feedback == "bottleneck"
            else None
        )
        # The noisy embedding samples (and their scale sigma_emb) only feed the bottleneck prior; no
        # loss reaches sigma_emb otherwise (as released), and DDP rejects parameters without a
        # gradient, so it is frozen then.
        self.sample_embeddings = prior_feedback == "bottleneck"
        scdl.sigma_emb.requires_grad_(self.sample_embeddings)

    @property
    def num_classes(self) -> int:
        return self.scdl.num_classes

    @property
    def changes_inference(self) -> bool:
        """Only the ``head`` prior changes the inference logits."""
        return self.prior_feedback == "head"

    # --- the plug-in contract (scdl.frameworks.plugin.FrameworkPlugin) ------------------------
    def train_step(
        self,
        backbone: SegmentationBackbone,
        skips: list[torch.Tensor],
        features: torch.Tensor,
        labels: torch.Tensor,
        sup_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> PluginStep:
        """SCDL terms of the batch, the host's logits (with the ``head`` prior if configured) and,
        for the ``bottleneck`` prior, the auxiliary prior-conditioned decoder pass on the labeled
        samples supervised with ``sup_loss`` (Prior5)."""
        terms = self.training_terms(features, labels, need_prior=self.changes_inference)
        logits = self.logits(features, backbone.head, terms.prior_tokens)
        loss = terms.aux_loss
        logs: dict[str, torch.Tensor] = {}
        if self.prior_feedback == "bottleneck":
            n_l = labels.shape[0]
            x5 = skips[-1][:n_l]
            assert terms.mean_embedding_samples is not None  # sampled for the bottleneck prior
            prior = self.bottleneck_prior(
                terms.prior_tokens[:n_l], terms.mean_embedding_samples[:n_l], x5.shape[2:]
            )
            aux_feats = backbone.decode([s[:n_l] for s in skips[:-1]] + [x5 + prior])
            loss_prior = sup_loss(backbone.head(aux_feats), labels)
            loss = loss + loss_prior
            logs["train/loss_prior_branch"] = loss_prior
        logs.update(self.log_values(terms))
        return PluginStep(logits=logits, loss=loss, logs=logs)

    def inference_logits(
        self, backbone: SegmentationBackbone, features: torch.Tensor
    ) -> torch.Tensor:
        """Logits with the ``head`` prior from the features alone (as the released inference)."""
        return self.logits(features, backbone.head)

    def aux_ramp(self) -> float:
        """Weight of the SCDL terms at ``training_step_index`` (1.0 without a ramp)."""
        return sigmoid_rampup(self.training_step_index, self.aux_rampup_steps)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, X, Y, Z) -> (B, t^3, D)."""
        return feature_map_to_tokens(features, self.token_grid)

    def training_terms(
        self, features: torch.Tensor, labels: torch.Tensor, need_prior: bool = True
    ) -> SCDLTerms:
        """SCDL losses and prior tokens for a batch whose first ``labels.shape[0]`` samples are labeled.

        Args:
            features: (B, D, X, Y, Z) decoder features, labeled samples first.
            labels: (Bl, X, Y, Z) integer labels of the first Bl samples.
            need_prior: also run the unlabeled samples through SCDL when ``use_unlabeled`` is off,
                to get their prior tokens (the ``head`` prior needs them for every sample).
        """
        n_l = labels.shape[0]
        tokens = self.tokens(features)
        y_dist = labels_to_token_dist(labels, self.num_classes, self.token_grid, self.ydist_mode)
        x_cls, y_cls = class_tokens_from_token_dist(
            tokens[:n_l], y_dist, include_background=self.scdl.sac_include_background
        )
        lab = self.scdl(
            tokens[:n_l],
            y_dist=y_dist,
            cls_tokens=x_cls,
            cls_ids=y_cls,
            sample_embeddings=self.sample_embeddings,
        )
        proxy, kl = lab.proxy_loss, lab.kl_loss
        priors, samples = [lab.prior_tokens], [lab.z_samples]
        if tokens.shape[0] > n_l and (self.use_unlabeled or need_prior):
            unl = self.scdl(tokens[n_l:], sample_embeddings=self.sample_embeddings)
            if self.use_unlabeled:
                # mean of the two calls: each is already a mean over its tokens
                proxy = 0.5 * (proxy + unl.proxy_loss)
                kl = 0.5 * (kl + unl.kl_loss)
            priors.append(unl.prior_tokens)
            samples.append(unl.z_samples)
        aux = self.w_aux * (self.w_proxy * proxy + self.w_sac * lab.sac_loss + self.w_kl * kl)
        if self.aux_rampup_steps:
            aux = aux * self.aux_ramp()
        mean_samples = (
            torch.cat([s.mean(dim=2) for s in samples])
            if all(s is not None for s in samples)
            else None
        )
        return SCDLTerms(
            aux_loss=aux,
            proxy_loss=proxy,
            sac_loss=lab.sac_loss,
            kl_loss=kl,
            prior_tokens=torch.cat(priors),
            mean_embedding_samples=mean_samples,
            labeled_token_dist=y_dist,
        )

    def log_values(self, terms: SCDLTerms) -> dict[str, torch.Tensor]:
        """Scalars worth logging for one iteration (loss terms, proxy and embedding scales)."""
        return {
            "train/scdl_aux": terms.aux_loss,
            "train/scdl_proxy": terms.proxy_loss,
            "train/scdl_sac": terms.sac_loss,
            "train/scdl_kl": terms.kl_loss,
            "scdl/proxy_scale_mean": self.scdl.proxies.scale.detach().mean(),
            "scdl/sigma_emb_mean": self.scdl.sigma_emb.detach().mean(),
        }

    def inference_prior(self, features: torch.Tensor) -> torch.Tensor:
        """Prior tokens (B, L, z) from features alone (no labels), as the released inference does."""
        return self.scdl(self.tokens(features), sample_embeddings=False).prior_tokens

    def logits(
        self,
        features: torch.Tensor,
        head: Callable[[torch.Tensor], torch.Tensor],
        prior_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, C, X, Y, Z) of ``head`` on ``features``: through :meth:`head_with_prior` with
        the ``head`` prior (``prior_tokens`` from training, else :meth:`inference_prior`), plain
        ``head(features)`` otherwise."""
        if self.prior_feedback != "head":
            return head(features)
        if prior_tokens is None:
            prior_tokens = self.inference_prior(features)
        return self.head_with_prior(features, prior_tokens, head)

    def head_with_prior(
        self,
        features: torch.Tensor,
        prior_tokens: torch.Tensor,
        head: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``head(features + up(conv(prior grid)))``: (B, D, X, Y, Z) -> logits (B, C, X, Y, Z)."""
        if self.detach_prior:
            prior_tokens = prior_tokens.detach()
        grid = tokens_to_grid(prior_tokens, self.token_grid).to(features.dtype)
        assert self.prior_to_feat is not None  # built with prior_feedback="head"
        prior = self.prior_to_feat(grid)
        prior = F.interpolate(prior, size=features.shape[2:], mode="trilinear", align_corners=False)
        return head(features + prior)

    def bottleneck_prior(
        self, prior_tokens: torch.Tensor, mean_samples: torch.Tensor, size
    ) -> torch.Tensor:
        """Prior5: concat(prior, mean noisy embedding) grid -> conv -> resized to the bottleneck
        ``size``: (B, bottleneck_channels, *size)."""
        if self.detach_prior:
            prior_tokens, mean_samples = prior_tokens.detach(), mean_samples.detach()
        grid = torch.cat(
            [
                tokens_to_grid(prior_tokens, self.token_grid),
                tokens_to_grid(mean_samples, self.token_grid),
            ],
            dim=1,
        )
        assert self.prior_to_bottleneck is not None  # built with prior_feedback="bottleneck"
        prior = self.prior_to_bottleneck(grid)
        return F.interpolate(prior, size=tuple(size), mode="trilinear", align_corners=False)

    def parameter_group(self, base_lr: float | None = None) -> dict:
        group: dict[str, Any] = {
            "params": [p for p in self.parameters() if p.requires_grad],
            "name": "scdl",
        }
        if base_lr is not None and self.lr_scale != 1.0:
            group["lr"] = base_lr * self.lr_scale
        return group
