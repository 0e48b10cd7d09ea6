"""Where and at which precision inference runs: the device, the autocast dtype, and the context
both ``eval.py`` and ``predict.py`` (and the diagnostics) run the network in."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)


def select_device(name: str | None = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is passed to torch."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(name))


def autocast_dtype(precision: str | int | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a Lightning precision string (``32-true``, ``bf16-mixed``, ``16-mixed``).

    ``None`` means full precision. fp16 on CPU falls back to full precision (slow, and not what
    a CPU run would have used)."""
    p = str(precision if precision is not None else "32")
    if p.startswith("bf16"):
        return torch.bfloat16
    if p.startswith("16"):
        if device.type == "cpu":
            log.warning("precision %s on CPU: running inference in fp32", p)
            return None
        return torch.float16
    return None


@contextlib.contextmanager
def inference_context(precision: str | int | None, device: torch.device) -> Iterator[None]:
    """``torch.inference_mode`` plus autocast matching ``precision`` (see :func:`autocast_dtype`)."""
    dtype = autocast_dtype(precision, device)
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield
