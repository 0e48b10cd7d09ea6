"""SAC: semantic anchor constraint (docs/method.md §3.2 step 2, §3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def semantic_anchor_loss(
    cls_embeddings: torch.Tensor,
    cls_ids: torch.Tensor,
    mu_hat: torch.Tensor,
    include_background: bool = True,
) -> torch.Tensor:
    """``L_SAC = mean_{c present} (1 - <sg(a_c), mu_hat_c>)``, ``a_c = n(mean_{i: y_i = c} n(u_i))``.

    The class anchors ``a_c`` are detached, so the loss only moves the proxy means.

    Args:
        cls_embeddings: (N, z) encoded class tokens ``u_i`` (normalised here).
        cls_ids: (N,) long class ids in ``[0, C)``.
        mu_hat: (C, z) normalised proxy means.
        include_background: when False, class-0 tokens are ignored.

    Returns:
        Scalar; 0 (still attached to ``mu_hat``'s device/dtype) when no class is present.
    """
    num_classes = mu_hat.shape[0]
    u = F.normalize(cls_embeddings.detach().to(mu_hat.dtype), dim=-1)
    onehot = F.one_hot(cls_ids.long(), num_classes).to(u.dtype)  # (N, C)
    if not include_background:
        onehot[:, 0] = 0.0
    present = onehot.sum(0) > 0  # (C,)
    if not bool(present.any()):
        return mu_hat.new_zeros(())
    # Normalising the per-class sum equals normalising the per-class mean.
    anchors = F.normalize(onehot.t() @ u, dim=-1)  # (C, z)
    cos = (anchors * mu_hat).sum(-1)
    return (1.0 - cos[present]).mean()
