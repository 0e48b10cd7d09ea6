"""Load state dicts of the reference code bases' VNet (UA-MT / GALoss / SCDL ``networks/vnet.py``)
into :class:`scdl.models.vnet.VNet`.

The reference modules wrap every block's layers in ``.conv`` (``block_one.conv.0.weight``) and name
blocks by words (``block_one`` ... ``block_nine``, ``block_one_dw`` for down-sampling,
``block_five_up`` for up-sampling); ours are flat sequences (``block1.0.weight``, ``down1``, ``up5``).
Checkpoints saved from ``nn.DataParallel`` carry a ``module.`` prefix, stripped here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import cast

import torch

_WORDS = {
    w: i
    for i, w in enumerate(
        ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"], 1
    )
}
_PATTERN = re.compile(r"^block_([a-z]+)(_dw|_up)?\.conv\.(.+)$")


def reference_key_to_ours(key: str) -> str:
    """``block_three_dw.conv.1.running_mean`` -> ``down3.1.running_mean``; ``out_conv.*`` unchanged."""
    if key.startswith("out_conv."):
        return key
    m = _PATTERN.match(key)
    if not m or m.group(1) not in _WORDS:
        raise KeyError(f"not a reference VNet key: {key!r}")
    n, kind, rest = _WORDS[m.group(1)], m.group(2), m.group(3)
    if kind == "_dw":
        return f"down{n}.{rest}"
    if kind == "_up":
        return f"up{n}.{rest}"
    return f"block{n}.{rest}"


def convert_reference_vnet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference VNet state dict (optionally ``module.``-prefixed, optionally wrapped in a dict under
    ``state_dict`` / ``model``) -> a state dict for :class:`~scdl.models.vnet.VNet`."""
    for wrapper in ("state_dict", "model", "net"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = cast(Mapping[str, torch.Tensor], state[wrapper])
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        out[reference_key_to_ours(key)] = value
    return out
