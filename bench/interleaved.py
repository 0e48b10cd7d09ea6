"""Shared by the benchmarks: time several step functions interleaved and print a ratio table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_timings(
    steps: dict[str, Callable[[], object]],
    n: int,
    warmup: int,
    timer: Callable[[Callable[[], object]], float] | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Every timing (seconds) of each step over ``n`` rounds after ``warmup`` rounds; the variants
    run one after the other within each round, so load drifts hit all of them alike. ``timer``
    times one call (default: wall clock; the suite passes one that synchronises CUDA);
    ``on_round(done, total)`` is called after each round."""

    def wall(step: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    timer = timer or wall
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            t = timer(step)
            if i >= warmup:
                times[name].append(t)
        if on_round is not None:
            on_round(i + 1, warmup + n)
    return times


def time_interleaved(steps: dict[str, Callable[[], None]], n: int, warmup: int) -> dict[str, float]:
    """Median wall time of each step (:func:`interleaved_timings`)."""
    times = interleaved_timings(steps, n, warmup)
    return {name: statistics.median(ts) for name, ts in times.items()}


def print_ratio_table(medians: dict[str, float], reference: str, label: str) -> None:
    """Markdown table ``| <label> | s / step | vs <reference> |``."""
    ref = medians[reference]
    print(f"| {label} | s / step | vs {reference} |\n|---|---|---|")
    for name, med in medians.items():
        print(f"| {name} | {med:.2f} | {med / ref:.2f} |")


def timing_trainer(
    accelerator: str,
    precision: str,
    max_steps: int,
    callbacks: list,
    devices: int = 1,
    strategy: str = "auto",
):
    """A Lightning ``Trainer`` that only trains, as the benchmarks time it: no logger, checkpoints,
    progress bar, model summary or validation."""
    import lightning as L

    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )
