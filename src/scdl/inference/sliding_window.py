"""Whole-volume inference by sliding windows (MONAI), shared by validation, ``eval.py`` and
``predict.py``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from scdl.utils.errors import ConfigError


@dataclass
class SlidingWindowConfig:
    """Sliding-window settings.

    Args:
        roi_size: window (X, Y, Z), normally the training patch.
        overlap: fraction of the window shared by neighbours, one value or one per axis (MONAI
            computes the stride as ``int(roi * (1 - overlap))``: 0.5 with a 96 window is stride 48;
            the papers' test stride xy 32 / z 16 is ``[0.66666, 0.66666, 0.83333]``).
        mode: ``gaussian`` or ``constant`` blending of overlapping windows.
        sw_batch_size: windows per forward pass.
        average: ``probs`` averages softmax probabilities (SCDL / GALoss evaluation) or ``logits``.
    """

    roi_size: Sequence[int] = (64, 64, 64)
    overlap: float | Sequence[float] = 0.5
    mode: str = "gaussian"
    sw_batch_size: int = 2
    average: str = "probs"

    def __post_init__(self) -> None:
        problems = window_problems(
            overlap=self.overlap,
            roi_size=self.roi_size,
            mode=self.mode,
            sw_batch_size=self.sw_batch_size,
            average=self.average,
        )
        if problems:
            raise ConfigError(
                "sliding-window inference (framework.inference / inference): " + "; ".join(problems)
            )


def _whole(value) -> bool:
    """A whole number (``2`` or ``2.0``), not a bool or a string."""
    return isinstance(value, int | float) and not isinstance(value, bool) and int(value) == value


def window_problems(prefix: str = "", **values) -> list[str]:
    """What is wrong with sliding-window settings (``overlap``, ``roi_size``, ``mode``,
    ``sw_batch_size``, ``average``; those given and not None), each as ``<prefix><key>=<value>:
    expected ...``. Used by :class:`SlidingWindowConfig` and by the config checks at start-up."""
    problems = []
    overlap = values.get("overlap")
    if overlap is not None:
        overlaps = [overlap] if isinstance(overlap, int | float) else list(overlap)
        ok = all(isinstance(o, int | float) and not isinstance(o, bool) for o in overlaps)
        if not (ok and all(0 <= o < 1 for o in overlaps) and len(overlaps) in (1, 3)):
            # MONAI's stride is int(roi * (1 - overlap)): 1.0 gives stride 0
            problems.append(
                f"{prefix}overlap={overlap}: expected a number in [0, 1) or 3 of them (windows "
                "must advance; e.g. 0.5)"
            )
    roi = values.get("roi_size")
    if roi is not None and (len(roi) != 3 or not all(_whole(r) and r > 0 for r in roi)):
        problems.append(f"{prefix}roi_size={list(roi)}: expected 3 positive integers")
    mode = values.get("mode")
    if mode is not None and mode not in ("gaussian", "constant"):
        problems.append(f"{prefix}mode={mode!r}: expected gaussian | constant")
    batch = values.get("sw_batch_size")
    if batch is not None and not (_whole(batch) and batch >= 1):
        problems.append(f"{prefix}sw_batch_size={batch}: expected an integer >= 1")
    average = values.get("average")
    if average is not None and average not in ("probs", "logits"):
        problems.append(f"{prefix}average={average!r}: expected probs | logits")
    return problems


@torch.no_grad()
def sliding_window_probs(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    cfg: SlidingWindowConfig,
) -> torch.Tensor:
    """Runs ``predictor`` ((N, 1, *roi) -> logits (N, C, *roi)) over ``image`` (B, 1, X, Y, Z).

    Returns class probabilities (B, C, X, Y, Z) (averaged probabilities, or softmax of averaged
    logits with ``average="logits"``). Volumes smaller than the window are padded by MONAI.
    """
    from monai.inferers import sliding_window_inference

    if cfg.average not in ("probs", "logits"):
        raise ValueError(f"average must be probs|logits, got {cfg.average!r}")

    def window(x: torch.Tensor) -> torch.Tensor:
        logits = predictor(x).float()
        return logits.softmax(dim=1) if cfg.average == "probs" else logits

    out = sliding_window_inference(
        image,
        roi_size=tuple(int(r) for r in cfg.roi_size),
        sw_batch_size=int(cfg.sw_batch_size),
        predictor=window,
        overlap=(
            float(cfg.overlap)
            if isinstance(cfg.overlap, int | float)
            else tuple(float(o) for o in cfg.overlap)
        ),
        mode=cfg.mode,
    )
    out = torch.as_tensor(out)
    return out if cfg.average == "probs" else out.softmax(dim=1)
