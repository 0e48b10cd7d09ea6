"""Quiet logs: each line once, no third-party tips or deprecation noise on a normal run.

Three sources of noise, each filtered where it is emitted (:func:`quiet_logs`, called at the start
of training and at the top of the notebooks):

- **Duplicated lines.** ``import lightning`` gives the ``lightning`` logger a console handler of its
  own (``INFO: <message>``) and lets records propagate as well, so under Hydra, which configures
  the root logger (console + ``train.log``), every Lightning line (seed, precision, devices,
  checkpoint restores, ``max_steps`` reached) was printed twice. When the root logger has handlers
  Lightning's own console handlers are removed and its records go through the root once.
- **Tips.** Lightning's advertisement for ``litlogger`` ("💡 Tip: ...") is dropped by a filter on
  the logger that emits it.
- **Warnings about third-party internals** that a user cannot act on (:data:`NOISE_WARNINGS`) are
  ignored by message and category; every other warning still shows.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, category): where each comes from
NOISE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch >= 2.10 deprecates LeafSpec, which lightning.pytorch.utilities._pytree still builds
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # Lightning's model summary cannot size bf16-mixed parameters (trainer=cpu picks bf16-mixed)
    (r"Precision .* is not supported by the model summary", UserWarning),
    # tqdm.auto imported inside a Jupyter kernel without ipywidgets (the notebooks)
    (r"IProgress not found", Warning),
)
TIP_PREFIXES = ("💡 Tip:",)
# the loggers Lightning's tips are emitted on (rank_zero_info)
TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class DropTips(logging.Filter):
    """Drops log records whose message starts with a tip marker (:data:`TIP_PREFIXES`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(TIP_PREFIXES)


def quiet_logs() -> None:
    """Applies the filters above (idempotent)."""
    for pattern, category in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropTips) for f in logger.filters):
            logger.addFilter(DropTips())
    if logging.getLogger().handlers:  # configured (Hydra, pytest): one path to the console
        for name in LIGHTNING_LOGGERS:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
