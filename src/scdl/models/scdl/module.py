"""The SCDL module (docs/method.md §3): encoder + Gaussian class proxies + CDBA + SAC + prior."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast, get_args

import torch
import torch.nn.functional as F
from torch import nn

from .alignment import (
    P2EAxis,
    bidirectional_similarity,
    cdba_assignments,
    mean_proxy_similarity,
    proxy_alignment_loss,
    symmetric_kl,
)
from .anchors import semantic_anchor_loss
from .encoder import TokenEncoder
from .prior import prior_tokens
from .proxies import ClassProxies


@dataclass
class SCDLOutput:
    """Result of :meth:`SCDL.forward` (float32 throughout).

    Attributes:
        proxy_loss: scalar ``L_pc + dist_weight * L_dist`` (CDBA distribution alignment).
        sac_loss: scalar ``L_SAC``; a 0 tensor when no class tokens were given.
        kl_loss: scalar symmetric KL between p2e and e2p (~0 for ``p2e_axis="class"`` and equal
            temperatures).
        prior_tokens: (B, L, z) unit-norm prior tokens.
        e2p: (B, L, C) embedding->proxy assignment.
        p2e: (B, L, C) proxy->embedding assignment (class-normalised, see ``alignment``).
        bi_sim: (B, L, C) bidirectional similarity (the unlabeled weights, before detaching).
        z_samples: (B, L, E, z) normalised noisy embedding samples, or None if not requested.
        embeddings: (B, L, z) normalised token embeddings ``z_hat`` (for plotting / diagnostics).
        loss_pc: scalar ``L_pc`` component of ``proxy_loss``.
        loss_dist: scalar ``L_dist`` component (unweighted).
    """

    proxy_loss: torch.Tensor
    sac_loss: torch.Tensor
    kl_loss: torch.Tensor
    prior_tokens: torch.Tensor
    e2p: torch.Tensor
    p2e: torch.Tensor
    bi_sim: torch.Tensor
    z_samples: torch.Tensor | None
    embeddings: torch.Tensor
    loss_pc: torch.Tensor
    loss_dist: torch.Tensor


class SCDL(nn.Module):
    """Semantic Class Distribution Learning module (defaults = §3.1).

    Args:
        num_classes: C, background included (14 Synapse, 16 AMOS).
        x_dim: token size D_x (VNet ``x9`` channels, 16).
        z_dim: embedding size z (256).
        sample_num: S, proxy samples per class and call (50).
        sample_num_emb: E, noisy embedding samples per token (2).
        sigma_emb_init: initial value of the learnable embedding-noise scale ``sigma_emb`` (1,1,1,z).
        proxy_scale_init: None (released: Xavier values through softplus, sigma ~= 0.69) or the
            initial proxy std for every class and dimension (see :class:`ClassProxies`).
        tau_e2p, tau_p2e: assignment temperatures (0.2, 0.2).
        p2e_axis: ``class`` (released code; KL == 0 with equal temperatures) or ``token``
            (paper-intended, see :mod:`scdl.models.scdl.alignment`).
        dist_weight: ``lambda_dist`` weighting ``L_dist`` inside the proxy loss (0.1).
        dropout: encoder dropout (0.2, train mode only; also applied to class tokens, §8.15).
        sac_include_background: whether class 0 takes part in SAC (True, as released).
        encoder_autocast: True (default) = the encoder's matmuls follow the caller's autocast
            state, like every other layer of the network (bf16 under CPU bf16 autocast: ~2x faster,
            it is the bulk of SCDL's cost); False = the encoder always runs in float32. Without an
            active autocast both are identical. Normalisations, softmaxes, sampling and all losses
            are float32 either way.

    The proxy/embedding sampling draws from the global torch RNG, fresh on every call (also in eval
    mode, as released); seed it for reproducibility.
    """

    def __init__(
        self,
        num_classes: int,
        x_dim: int = 16,
        z_dim: int = 256,
        sample_num: int = 50,
        sample_num_emb: int = 2,
        sigma_emb_init: float = 0.05,
        proxy_scale_init: float | None = None,
        tau_e2p: float = 0.2,
        tau_p2e: float = 0.2,
        p2e_axis: P2EAxis = "class",
        dist_weight: float = 0.1,
        dropout: float = 0.2,
        sac_include_background: bool = True,
        encoder_autocast: bool = True,
    ) -> None:
        super().__init__()
        if p2e_axis not in get_args(P2EAxis):
            choices = "|".join(get_args(P2EAxis))
            raise ValueError(f"unknown p2e_axis {p2e_axis!r}; expected {choices}")
        self.num_classes = num_classes
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.sample_num = sample_num
        self.sample_num_emb = sample_num_emb
        self.tau_e2p = tau_e2p
        self.tau_p2e = tau_p2e
        self.p2e_axis: P2EAxis = p2e_axis
        self.dist_weight = dist_weight
        self.sac_include_background = sac_include_background
        self.encoder_autocast = encoder_autocast
        self.encoder = TokenEncoder(x_dim, z_dim, dropout)
        self.proxies = ClassProxies(num_classes, z_dim, proxy_scale_init)
        self.sigma_emb = nn.Parameter(torch.full((1, 1, 1, z_dim), float(sigma_emb_init)))
        self.register_load_state_dict_pre_hook(_legacy_proxy_key_hook)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., x_dim) -> float32 (..., z).

        With ``encoder_autocast`` the MLP's matmuls follow the caller's autocast state; otherwise the
        encoder runs in float32 with autocast disabled.
        """
        device_type = x.device.type
        if self.encoder_autocast and torch.is_autocast_enabled(device_type):
            return self.encoder(x).float()
        with torch.autocast(device_type=device_type, enabled=False):
            return self.encoder(x.to(cast(nn.Linear, self.encoder[0]).weight.dtype)).float()

    def proxy_means(self) -> torch.Tensor:
        """(C, z) normalised proxy means ``mu_hat`` (float32)."""
        return F.normalize(self.proxies.mean.float(), dim=-1)

    def forward(
        self,
        tokens: torch.Tensor,
        y_dist: torch.Tensor | None = None,
        cls_tokens: torch.Tensor | None = None,
        cls_ids: torch.Tensor | None = None,
        sample_embeddings: bool = True,
    ) -> SCDLOutput:
        """Runs SCDL on one batch of tokens.

        Args:
            tokens: (B, L, x_dim) tokens, any float dtype.
            y_dist: optional (B, L, C) soft token labels (labeled samples); when None the proxy loss
                is weighted by the detached ``bi_sim`` (unlabeled samples).
            cls_tokens: optional class tokens for SAC, (N, x_dim) or (N, L_c, x_dim) (averaged over
                L_c), with ``cls_ids`` (N,) long in ``[0, C)``.
            sample_embeddings: compute ``z_samples`` (only the AMOS Prior5 variant uses them).

        Returns:
            :class:`SCDLOutput`.
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.x_dim:
            raise ValueError(f"tokens must be (B, L, {self.x_dim}), got {tuple(tokens.shape)}")
        expected = (*tokens.shape[:2], self.num_classes)
        if y_dist is not None and tuple(y_dist.shape) != expected:
            raise ValueError(f"y_dist must be {expected}, got {tuple(y_dist.shape)}")
        if (cls_tokens is None) != (cls_ids is None):
            raise ValueError("cls_tokens and cls_ids must be given together")

        # 1. embeddings (the only autocast-eligible part, see ``encoder_autocast``)
        z = self._encode(tokens)  # (B, L, z) float32
        # 2a. SAC class tokens: the anchors are detached, so no graph through the encoder is needed.
        u = None
        if cls_tokens is not None and cls_ids is not None and cls_tokens.shape[0] > 0:
            with torch.no_grad():
                u = self._encode(cls_tokens.mean(1) if cls_tokens.dim() == 3 else cls_tokens)

        # Everything below is loss math: float32 regardless of the caller's autocast.
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            z_hat = F.normalize(z, dim=-1)
            mu_hat = self.proxy_means()  # (C, z)

            # 2b. SAC loss (moves the proxy means only)
            if u is not None and cls_ids is not None:
                sac_loss = semantic_anchor_loss(u, cls_ids, mu_hat, self.sac_include_background)
            else:
                sac_loss = mu_hat.new_zeros(())

            # 3-4. proxy samples (C, S, z) and noisy embedding samples (B, L, E, z)
            samples = self.proxies.sample(self.sample_num).float()
            z_samples = None
            if sample_embeddings:
                b, length, _ = z.shape
                eps = torch.randn(
                    b, length, self.sample_num_emb, self.z_dim, device=z.device, dtype=z.dtype
                )
                z_samples = F.normalize(z.unsqueeze(2) + self.sigma_emb.float() * eps, dim=-1)

            # 5-9. CDBA
            a_bar = mean_proxy_similarity(z_hat, samples)  # (B, L, C)
            e2p, p2e = cdba_assignments(z_hat, mu_hat, self.tau_e2p, self.tau_p2e, self.p2e_axis)
            kl_loss = symmetric_kl(p2e, e2p)
            bi_sim = bidirectional_similarity(e2p, p2e)
            prior = prior_tokens(p2e, mu_hat)
            weights = y_dist.float() if y_dist is not None else bi_sim.detach()
            proxy_loss, loss_pc, loss_dist = proxy_alignment_loss(a_bar, weights, self.dist_weight)

        return SCDLOutput(
            proxy_loss=proxy_loss,
            sac_loss=sac_loss,
            kl_loss=kl_loss,
            prior_tokens=prior,
            e2p=e2p,
            p2e=p2e,
            bi_sim=bi_sim,
            z_samples=z_samples,
            embeddings=z_hat,
            loss_pc=loss_pc,
            loss_dist=loss_dist,
        )


def _legacy_proxy_key_hook(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """Accepts released SCDL ("eprl") state dicts, where the proxies are a bare ``proxies`` tensor."""
    legacy = prefix + "proxies"
    if legacy in state_dict and prefix + "proxies.weight" not in state_dict:
        state_dict[prefix + "proxies.weight"] = state_dict.pop(legacy)
