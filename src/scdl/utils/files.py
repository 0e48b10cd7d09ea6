"""Small file and id-list helpers shared by the data, preparation and prediction code."""

from __future__ import annotations

import os
import re
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
TMP_PREFIX = ".tmp-"  # temporary files are named .tmp-<pid>@<host>-<final name>


def host_tag() -> str:
    """This machine's name as it appears in temporary file names (``-`` and ``@`` replaced)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def tmp_owner(name: str) -> tuple[int, str | None] | None:
    """``(pid, host)`` of a temporary file name written by :func:`atomic_write` (host None for
    names written before hosts were recorded), or None for another name."""
    m = re.match(rf"^{re.escape(TMP_PREFIX)}(\d+)(?:@([A-Za-z0-9_.]+))?-", name)
    return (int(m.group(1)), m.group(2)) if m else None


def tmp_sibling(path: Path) -> Path:
    """This process's temporary file for ``path``: ``.tmp-<pid>@<host>-<name>`` beside it."""
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}@{host_tag()}-{path.name}")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Writes ``path`` through ``write(tmp)`` into a temporary sibling, then renames it into place,
    so a killed process never leaves a truncated ``path`` (only a ``.tmp-<pid>@<host>-*`` file,
    whose host says on which machine its pid lives: caches on shared file systems are written
    from several nodes)."""
    tmp = tmp_sibling(path)
    write(tmp)
    os.replace(tmp, path)


def create_once(path: Path, text: str) -> str:
    """Writes ``text`` to ``path`` unless the file exists, atomically (a hard link of a complete
    temporary file, which fails if ``path`` appeared meanwhile); returns the file's text, which is
    another process's when it created the file first (DDP ranks, a requeued job)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    tmp.write_text(text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: exclusive create, then write
        try:
            with open(path, "x") as f:
                f.write(text)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text()


def repeated(items: Iterable[str]) -> list[str]:
    """The items that occur more than once, sorted."""
    return sorted(item for item, n in Counter(items).items() if n > 1)


def nifti_case_name(path: str | Path) -> str | None:
    """A NIfTI file's name without ``.nii.gz`` / ``.nii``; None for a file of another type."""
    name = Path(path).name
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None
