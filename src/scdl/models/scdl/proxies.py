"""Learnable Gaussian class proxies (docs/method.md §3.1, §3.2 step 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassProxies(nn.Module):
    """One diagonal Gaussian per class in the z-space.

    The single parameter ``weight`` (C, 2z) is Xavier-uniform initialised (gain 1, as the released
    code); its first half is the mean ``mu_c`` and ``softplus`` of its second half the std ``sigma_c``.

    Args:
        num_classes: C, background included.
        z_dim: embedding size z.
        scale_init: None (released) keeps the Xavier values in the scale half, i.e. sigma ~= 0.69
            per dimension, so a sampled proxy is mostly noise (|sigma * eps| ~= 11 vs |mu| ~= 1 at
            z = 256); a float sets every sigma to that value at init (inverse softplus), e.g. 0.05.
    """

    def __init__(self, num_classes: int, z_dim: int, scale_init: float | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.weight = nn.Parameter(torch.empty(num_classes, 2 * z_dim))
        nn.init.xavier_uniform_(self.weight)
        if scale_init is not None:
            if scale_init <= 0:
                raise ValueError(f"proxy scale_init must be > 0, got {scale_init}")
            # softplus^-1(s) = log(expm1(s))
            raw = torch.log(torch.expm1(torch.tensor(float(scale_init), dtype=torch.float64)))
            with torch.no_grad():
                self.weight[:, z_dim:] = raw.item()

    @property
    def mean(self) -> torch.Tensor:
        """(C, z) proxy means ``mu``."""
        return self.weight[:, : self.z_dim]

    @property
    def scale(self) -> torch.Tensor:
        """(C, z) proxy standard deviations ``softplus(weight[:, z:])`` (> 0)."""
        return F.softplus(self.weight[:, self.z_dim :])

    def sample(self, num_samples: int) -> torch.Tensor:
        """Reparameterised samples ``mu_c + sigma_c * eps``, eps ~ N(0, I) drawn fresh per call.

        Returns:
            (C, S, z) samples, differentiable w.r.t. ``weight``.
        """
        eps = torch.randn(
            self.num_classes,
            num_samples,
            self.z_dim,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        return self.mean.unsqueeze(1) + self.scale.unsqueeze(1) * eps
