"""Progress bars for long one-off work (preprocessing, data generation, evaluation, prediction).

On a terminal: a rich progress bar. When the output is not a terminal (a log file, CI, ``nohup``,
a pipe), a rich bar would only appear once the work is done, so plain lines are printed instead:
one per tenth of the work and at least every ``every_s`` seconds, e.g.
``preprocess phantom (phantom): 12/30 (40%), 0:41 elapsed, ~1:02 left``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class SizedIterable(Protocol[T_co]):
    """Anything with a length that can be iterated (a sequence, or futures as they complete)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[T_co]: ...


def _is_terminal() -> bool:
    from rich.console import Console

    return Console().is_terminal


def format_clock(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05`` (progress lines of evaluation and training)."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def plain_progress(
    items: SizedIterable[T], description: str, every_s: float = 30.0, stream=None
) -> Iterator[T]:
    """Iterates ``items``, printing a progress line to ``stream`` (stdout) after each tenth of the
    items and whenever ``every_s`` seconds passed since the last line (always after the last)."""
    stream = stream if stream is not None else sys.stdout
    total = len(items)
    start = last = time.monotonic()
    shown_tenth = 0
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        tenth = done * 10 // max(1, total)
        if done == total or tenth > shown_tenth or now - last >= every_s:
            elapsed = now - start
            left = elapsed / done * (total - done)
            print(
                f"{description}: {done}/{total} ({100 * done // max(1, total)}%), "
                f"{format_clock(elapsed)} elapsed, ~{format_clock(left)} left",
                file=stream,
                flush=True,
            )
            shown_tenth, last = tenth, now


def progress_iter(items: SizedIterable[T], description: str, enabled: bool = True) -> Iterator[T]:
    """Iterates ``items`` with a rich progress bar on a terminal, progress lines elsewhere (see the
    module docstring); plain iteration when disabled."""
    if not enabled:
        yield from items
        return
    if not _is_terminal():
        yield from plain_progress(items, description)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task)
