"""Small file and id-list helpers shared by the data, preparation and prediction code."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

TMP_PREFIX = ".tmp-"  # temporary files are named .tmp-<pid>-<final name>


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Writes ``path`` through ``write(tmp)`` into a temporary sibling, then renames it into place,
    so a killed process never leaves a truncated ``path`` (only a ``.tmp-<pid>-*`` file)."""
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    write(tmp)
    os.replace(tmp, path)


def repeated(items: Iterable[str]) -> list[str]:
    """The items that occur more than once, sorted."""
    return sorted(item for item, n in Counter(items).items() if n > 1)
