"""Prior tokens fed back to the segmentation network (docs/method.md §3.2 step 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prior_tokens(p2e: torch.Tensor, mu_hat: torch.Tensor) -> torch.Tensor:
    """``prior_{b,l} = n(sum_c P^{p2e}_{b,l,c} mu_hat_c)``.

    Args:
        p2e: (B, L, C) proxy->embedding assignment (any per-token positive scaling gives the same
            result, because of the final normalisation).
        mu_hat: (C, z) normalised proxy means.

    Returns:
        (B, L, z) unit-norm prior tokens.
    """
    return F.normalize(p2e @ mu_hat, dim=-1)
