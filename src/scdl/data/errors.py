"""Data problems that name their file and their fix, and the error that lists them.

A :class:`Problem` is one finding of the data checks (:mod:`scdl.data.checks`) or of a reader
(:mod:`scdl.data.layouts`); :class:`DataCheckError` carries the errors among them. Under Hydra
only its message is printed (no traceback; ``HYDRA_FULL_ERROR=1`` shows it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.errors import CompactHydraException

ERROR, WARNING = "error", "warning"
_SHOW = 20  # problems listed in an exception message before "... and N more"


@dataclass(frozen=True)
class Problem:
    """One finding: ``check`` is its category (a row of the summary table)."""

    severity: str  # "error" | "warning"
    check: str
    message: str
    fix: str
    case_id: str | None = None
    path: str | Path | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def __str__(self) -> str:
        where = ": ".join(str(p) for p in (self.case_id, self.path) if p is not None)
        return (
            f"{where}: {self.message}. Fix: {self.fix}"
            if where
            else f"{self.message}. Fix: {self.fix}"
        )


class DataCheckError(ValueError, CompactHydraException):
    """The data set has problems that would corrupt or break training; the message lists each one
    with its file and fix. Under Hydra only the message is printed."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)

    @classmethod
    def from_problems(
        cls, problems: Iterable[Problem], context: str = "", footer: str | None = None
    ) -> DataCheckError:
        errors = [p for p in problems if p.is_error]
        lines = [f"{context}{len(errors)} data error(s):"]
        lines += [f"  - {p}" for p in errors[:_SHOW]]
        if len(errors) > _SHOW:
            lines.append(f"  ... and {len(errors) - _SHOW} more")
        lines.append(
            footer
            or "Nothing was written. Full report: `python src/check_data.py data=<name> ...`; "
            "data.check=false skips the checks (docs/real-data.md)."
        )
        return cls("\n".join(lines), errors)
