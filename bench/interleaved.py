"""Shared by the benchmarks: time several step functions interleaved and print a ratio table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_interleaved(steps: dict[str, Callable[[], None]], n: int, warmup: int) -> dict[str, float]:
    """Median wall time of each step over ``n`` rounds after ``warmup`` rounds; the variants run
    one after the other within each round, so load drifts hit all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def print_ratio_table(medians: dict[str, float], reference: str, label: str) -> None:
    """Markdown table ``| <label> | s / step | vs <reference> |``."""
    ref = medians[reference]
    print(f"| {label} | s / step | vs {reference} |\n|---|---|---|")
    for name, med in medians.items():
        print(f"| {name} | {med:.2f} | {med / ref:.2f} |")
