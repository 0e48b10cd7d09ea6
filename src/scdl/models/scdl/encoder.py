"""Token encoder f of SCDL (docs/method.md §3.1).

The MLP is the released ``[Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear]`` (state-dict keys
``0``, ``3``, ``6``). Its forward computes every ReLU + Dropout pair as ``relu(x) * mask`` with a
cheaper mask: on CPU ``nn.Dropout`` draws one Bernoulli variable per element (``bernoulli_``), which
for the (3456, 512) hidden activations of one SCDL call costs about as much as a 512x512 matmul; here
each element uses 16 random bits (four per ``int64`` draw), i.e. a keep probability quantised to
1/65536 (``p = 0.2`` becomes 0.1999969), with the matching ``1 / keep`` rescaling so the layer stays
unbiased. Same distribution family, different random stream than ``nn.Dropout``.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

_BITS = 16


def dropout_keep_mask(
    shape: torch.Size | tuple[int, ...], p: float, device: torch.device
) -> tuple[torch.Tensor, float]:
    """Bernoulli keep mask with ``P(keep) = 1 - round(p * 2**16) / 2**16``, from the global torch RNG.

    Returns:
        ``(keep (shape) bool, scale)`` with ``scale = 1 / P(keep)``.
    """
    threshold = round(p * 2**_BITS)
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    chunks = words.view(torch.int16)[:n].view(shape)  # uniform over [-2**15, 2**15)
    keep = chunks >= threshold - 2 ** (_BITS - 1)
    return keep, 2**_BITS / (2**_BITS - threshold)


def relu_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``dropout(relu(x), p)`` with the 16-bit mask of :func:`dropout_keep_mask`; shape-preserving."""
    if not training or p == 0.0:
        return torch.relu(x)
    if p >= 1.0:
        return torch.zeros_like(x)
    keep, scale = dropout_keep_mask(x.shape, p, x.device)
    # The mask is a constant, so autograd only saves it (no Bernoulli, no extra rescaling pass).
    return torch.relu(x) * keep.to(x.dtype).mul_(scale)


class TokenEncoder(nn.Sequential):
    """Token-wise MLP ``x_dim -> 2z -> 2z -> z`` with ReLU and Dropout after the hidden layers.

    Input (..., x_dim) -> output (..., z_dim); dropout is active in train mode only.
    """

    def __init__(self, x_dim: int, z_dim: int, dropout: float = 0.2) -> None:
        hidden = 2 * z_dim
        super().__init__(
            nn.Linear(x_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, z_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., x_dim) -> (..., z_dim); ReLU + Dropout pairs run fused (see module docstring)."""
        lin1, _, drop1, lin2, _, drop2, lin3 = self
        x = relu_dropout(lin1(x), cast(nn.Dropout, drop1).p, self.training)
        x = relu_dropout(lin2(x), cast(nn.Dropout, drop2).p, self.training)
        return lin3(x)
