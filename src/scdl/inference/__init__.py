"""Inference on whole volumes, used by the frameworks' validation, ``eval.py`` and ``predict.py``."""

from scdl.inference.sliding_window import SlidingWindowConfig, sliding_window_probs

__all__ = ["SlidingWindowConfig", "sliding_window_probs"]
