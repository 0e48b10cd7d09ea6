"""CDBA: class distribution bidirectional alignment (docs/method.md §3.2 steps 5, 6, 8, 9).

All tensors use the token-major layout (B, L, C): ``B`` batch, ``L`` tokens, ``C`` classes, ``z``
embedding size, ``S`` proxy samples per class. Inputs ``z_hat``/``mu_hat`` are L2-normalised.

p2e axis
--------
``class`` (default, code-faithful): ``P^{p2e} = softmax_c(g / tau_p2e)``, the released behaviour. With
``tau_e2p == tau_p2e`` it equals ``P^{e2p}`` and the symmetric KL is identically 0 (§3.4).

``token`` (paper-intended "proxy -> embedding"): each class proxy distributes its mass over the
tokens of its sample, ``R_{b,c,l} = softmax_l(g_{b,l,c} / tau_p2e)`` (per (b, c)), i.e. p(token | class).
``R`` is not a distribution over classes, so comparing it elementwise with ``P^{e2p}`` (a distribution
over classes per token) would not be a KL. We turn it into a per-token class posterior by Bayes with
a uniform class prior, ``P^{p2e}_{b,l,c} = R_{b,c,l} / sum_c' R_{b,c',l}``, which equals
``softmax_c(g / tau_p2e - log Z_{b,c})`` with ``Z_{b,c} = sum_l exp(g_{b,l,c} / tau_p2e)``: the
assignment logits de-biased by how much of the sample every class already claims (one Sinkhorn-style
balancing step, which is what counters head-class dominance). The KL is then the same per-token
symmetric KL as in the class mode (same reduction and scale), > 0 as soon as the classes' masses
``Z_{b,c}`` differ. Nothing else depends on using ``R`` or its normalised form: the prior token is
L2-normalised, so the same from either, and ``bi_sim`` renormalises over classes (only its 1e-6
epsilon would notice the ~1/L scale of ``R``, one more reason to use the class-normalised form).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

P2EAxis = Literal["class", "token"]


def mean_proxy_similarity(z_hat: torch.Tensor, proxy_samples: torch.Tensor) -> torch.Tensor:
    """``A_bar_{b,l,c} = mean_s cos(z_{b,l}, p_{c,s})``.

    Uses the exact identity ``mean_s <z_hat, p_hat_cs> = <z_hat, mean_s p_hat_cs>`` (linearity of the
    inner product), so the (B, L, C, S) similarity tensor of the released code is never materialised:
    one (B*L, z) x (z, C) matmul instead of (B*L, z) x (z, C*S).

    Args:
        z_hat: (B, L, z) normalised embeddings.
        proxy_samples: (C, S, z) raw (unnormalised) proxy samples.

    Returns:
        (B, L, C).
    """
    p_bar = F.normalize(proxy_samples, dim=-1).mean(1)  # (C, z)
    return z_hat @ p_bar.t()


def cdba_assignments(
    z_hat: torch.Tensor,
    mu_hat: torch.Tensor,
    tau_e2p: float = 0.2,
    tau_p2e: float = 0.2,
    p2e_axis: P2EAxis = "class",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding->proxy and proxy->embedding soft assignments from ``g = <z_hat, mu_hat>``.

    Args:
        z_hat: (B, L, z) normalised embeddings.
        mu_hat: (C, z) normalised proxy means.
        tau_e2p, tau_p2e: softmax temperatures.
        p2e_axis: ``class`` or ``token`` (see the module docstring).

    Returns:
        ``(e2p, p2e)``, both (B, L, C) and summing to 1 over C.
    """
    g = z_hat @ mu_hat.t()  # (B, L, C)
    e2p = torch.softmax(g / tau_e2p, dim=-1)
    if p2e_axis == "class":
        p2e = torch.softmax(g / tau_p2e, dim=-1)
    elif p2e_axis == "token":
        # log p(token | class) per (b, c), then Bayes-normalised over classes, in log space for
        # stability (p(token | class) ~ 1/L is small).
        log_r = torch.log_softmax(g / tau_p2e, dim=1)
        p2e = torch.softmax(log_r, dim=-1)
    else:
        raise ValueError(f"unknown p2e_axis {p2e_axis!r}; expected class|token")
    return e2p, p2e


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``KL(p || q) + KL(q || p)`` with PyTorch ``kl_div`` "batchmean" semantics.

    Both distributions are clamped at ``eps`` before use; each KL is the sum over all elements of
    ``p (log p - log q)`` divided by the leading dimension (B), so the symmetric sum is
    ``sum (p - q)(log p - log q) / B``.

    Args:
        p, q: (B, ...) tensors of the same shape.

    Returns:
        Scalar.
    """
    p = p.clamp_min(eps)
    q = q.clamp_min(eps)
    return ((p - q) * (p.log() - q.log())).sum() / p.shape[0]


def bidirectional_similarity(
    e2p: torch.Tensor, p2e: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """``bi_sim = e2p * p2e / (sum_c e2p * p2e + eps)``; (B, L, C) -> (B, L, C)."""
    prod = e2p * p2e
    return prod / (prod.sum(-1, keepdim=True) + eps)


def proxy_alignment_loss(
    a_bar: torch.Tensor, weights: torch.Tensor, dist_weight: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Proxy loss ``L_pc + dist_weight * L_dist`` (§3.2 step 9, §3.3).

    ``L_pc = mean_{n,c} exp(-(2 w - 1) A_bar)`` and ``L_dist = mean_n sum_c w (1 - A_bar)`` with n over
    all B*L tokens.

    Args:
        a_bar: (B, L, C) mean cosine similarity to the sampled proxies.
        weights: (B, L, C) token/class weights ``w`` (soft labels or detached ``bi_sim``).
        dist_weight: ``lambda_dist``.

    Returns:
        ``(total, l_pc, l_dist)`` scalars.
    """
    l_pc = torch.exp(-(2.0 * weights - 1.0) * a_bar).mean()
    l_dist = (weights * (1.0 - a_bar)).sum(-1).mean()
    return l_pc + dist_weight * l_dist, l_pc, l_dist
