"""Per-case work over a process pool: checking and preprocessing a data set of hundreds of CT
volumes uses the cores of the machine (nnU-Net's ``-np``), with results equal to the serial pass.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from scdl.utils.progress import progress_iter

T = TypeVar("T")
R = TypeVar("R")

#: the most worker processes ``auto`` starts (decoding and resampling are memory bound too)
MAX_AUTO_WORKERS = 8


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def resolve_workers(workers: int | str | None) -> int:
    """``auto`` / None -> the cores this process may use (at most :data:`MAX_AUTO_WORKERS`); an
    integer >= 1 as given."""
    if workers in (None, "auto"):
        return max(1, min(available_cores(), MAX_AUTO_WORKERS))
    n = int(workers)
    if n < 1:
        raise ValueError(f"workers must be >= 1 or auto, got {workers!r}")
    return n


#: below this much raw data a process pool costs more (its start-up) than it saves
MIN_PARALLEL_BYTES = 64 * 2**20


def workers_for(files: Sequence, workers: int) -> int:
    """``workers``, or 1 when ``files`` (paths) hold less than :data:`MIN_PARALLEL_BYTES`."""
    if workers <= 1:
        return 1
    total = 0
    for path in files:
        try:
            total += os.path.getsize(path)
        except OSError:
            continue
        if total >= MIN_PARALLEL_BYTES:
            return workers
    return 1


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one case per core: no oversubscription


def map_cases(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int = 1,
    description: str = "",
    progress: bool = True,
) -> list[R]:
    """``[fn(item) for item in items]``, in order; with ``workers`` > 1 (and more than one item)
    in that many ``spawn`` processes of one thread each. ``fn`` must be picklable (a module-level
    function or a ``functools.partial`` of one). The first exception is raised as it was raised
    in the worker; pending items are cancelled."""
    items = list(items)
    workers = min(int(workers), len(items))
    if workers <= 1:
        return [fn(item) for item in progress_iter(items, description, progress and bool(items))]
    results: list = [None] * len(items)
    pool = ProcessPoolExecutor(workers, mp.get_context("spawn"), _init_worker)
    try:
        futures = {pool.submit(fn, item): k for k, item in enumerate(items)}
        for fut in progress_iter(_Completed(futures), description, progress):
            results[futures[fut]] = fut.result()  # the worker's exception, raised here
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


class _Completed:
    """Futures in the order they finish, with a length (for :func:`progress_iter`)."""

    def __init__(self, futures: Mapping[Future[Any], int]) -> None:
        self.futures = futures

    def __len__(self) -> int:
        return len(self.futures)

    def __iter__(self) -> Iterator[Future[Any]]:
        return as_completed(self.futures)
