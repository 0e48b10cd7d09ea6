"""Train / validation / test splits with a labeled and an unlabeled part, validated on load.

A split file is JSON: ``{"labeled": [...], "unlabeled": [...], "val": [...], "test": [...]}``
(case ids), optionally with ``"source"`` and ``"description"`` strings. The committed ones live in
``conf/data/splits/<data set>/<name>.json`` (``data.labeled=<name>`` picks one). Without a file,
:func:`make_split` draws one from a labeled ratio and a seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.errors import CompactHydraException

from scdl.utils.files import repeated

PARTS = ("labeled", "unlabeled", "val", "test")
_SHOW = 10  # ids named in an error message before "... and N more"


class SplitError(ValueError, CompactHydraException):
    """A split that overlaps, names missing cases or needs labels it does not have. Under Hydra
    only the message is printed."""


class SplitFileNotFoundError(FileNotFoundError, CompactHydraException):
    """The split file does not exist (the message lists the split files next to it)."""


def _ids(ids: Sequence[str]) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:_SHOW])
    return f"[{shown}{f', ... and {len(ids) - _SHOW} more' if len(ids) > _SHOW else ''}]"


@dataclass(frozen=True)
class Split:
    labeled: list[str]
    unlabeled: list[str]
    val: list[str]
    test: list[str]

    def to_dict(self) -> dict[str, list[str]]:
        return asdict(self)

    def without(self, case_ids: Iterable[str]) -> Split:
        """The split with ``case_ids`` removed from every part (e.g. the MRI cases of AMOS when
        ``data.module.exclude={modality: MRI}``)."""
        drop = set(case_ids)
        return Split(*[[i for i in getattr(self, p) if i not in drop] for p in PARTS])

    def sizes(self) -> dict[str, int]:
        return {p: len(getattr(self, p)) for p in PARTS}

    def validate(
        self,
        available: Iterable[str] | None = None,
        labeled_cases: Iterable[str] | None = None,
        name: str = "split",
    ) -> Split:
        """Checks that the parts are disjoint, that every id exists in ``available`` and that the
        labeled, val and test cases have labels (``labeled_cases``). Raises :class:`SplitError`
        naming the offending cases; returns ``self`` so calls chain."""
        if not self.labeled:
            raise SplitError(f"{name}: no labeled cases")
        for part in PARTS:
            ids = getattr(self, part)
            dup = repeated(ids)
            if dup:
                raise SplitError(f"{name}: duplicate ids in '{part}': {_ids(dup)}")
        for i, a in enumerate(PARTS):
            for b in PARTS[i + 1 :]:
                both = sorted(set(getattr(self, a)) & set(getattr(self, b)))
                if both:
                    raise SplitError(
                        f"{name}: '{a}' and '{b}' share {len(both)} case(s): {_ids(both)}"
                    )
        if available is not None:
            avail = set(available)
            missing = {p: sorted(set(getattr(self, p)) - avail) for p in PARTS}
            missing = {p: m for p, m in missing.items() if m}
            if missing:
                total = len(set().union(*missing.values()))
                detail = "; ".join(f"{p}: {_ids(m)}" for p, m in missing.items())
                raise SplitError(
                    f"{name}: {total} case(s) not found in the prepared data set "
                    f"({len(avail)} cases): {detail}. Is data.root the right data set, was it "
                    "prepared completely, or are these cases excluded (data.module.exclude)?"
                )
        if labeled_cases is not None:
            has_label = set(labeled_cases)
            for part in ("labeled", "val", "test"):
                lacking = sorted(set(getattr(self, part)) - has_label)
                if lacking:
                    raise SplitError(f"{name}: '{part}' case(s) without a label: {_ids(lacking)}")
        return self


def load_split_file(path: str | Path) -> Split:
    """Reads a JSON split file (keys ``labeled``, ``unlabeled``, ``val``, ``test``)."""
    path = Path(path)
    if not path.is_file():
        nearby = sorted(q.stem for q in path.parent.glob("*.json")) if path.parent.is_dir() else []
        hint = f"; split files in {path.parent}: {nearby}" if nearby else ""
        raise SplitFileNotFoundError(f"split file not found: {path}{hint}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SplitError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise SplitError(f"{path}: expected a JSON object with keys {list(PARTS)}")
    unknown = set(data) - set(PARTS) - {"description", "source"}
    if unknown:
        raise SplitError(f"{path}: unknown keys {sorted(unknown)}; expected {list(PARTS)}")
    return Split(*[[str(i) for i in data.get(p, [])] for p in PARTS])


def save_split_file(
    split: Split, path: str | Path, source: str | None = None, description: str | None = None
) -> Path:
    """Writes ``split`` as a JSON split file (with optional ``source`` / ``description``)."""
    path = Path(path)
    data: dict = {}
    if description:
        data["description"] = description
    if source:
        data["source"] = source
    data.update(split.to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def make_split(
    case_ids: Sequence[str],
    labeled_ratio: float | None = 0.2,
    num_labeled: int | None = None,
    num_val: int = 4,
    num_test: int = 6,
    seed: int = 0,
    unlabeled_only: Sequence[str] = (),
) -> Split:
    """Draws a split: ``num_test`` + ``num_val`` cases held out, then ``num_labeled`` (or
    ``ceil(labeled_ratio * #train)``, at least 1) labeled, the rest of the training cases unlabeled.

    ``case_ids`` must all carry labels; ``unlabeled_only`` (cases without labels) join the unlabeled
    part. Deterministic in ``seed`` and independent of the input order.
    """
    ids = sorted(set(case_ids))
    if len(ids) < num_val + num_test + 1:
        raise SplitError(
            f"{len(ids)} labeled cases cannot give {num_test} test + {num_val} val + 1 training case"
        )
    order = list(np.random.default_rng(seed).permutation(len(ids)))
    shuffled = [ids[i] for i in order]
    test, val, train = (
        shuffled[:num_test],
        shuffled[num_test : num_test + num_val],
        shuffled[num_test + num_val :],
    )
    if num_labeled is None:
        if labeled_ratio is None or not 0.0 < labeled_ratio <= 1.0:
            raise SplitError(f"labeled_ratio must be in (0, 1], got {labeled_ratio}")
        num_labeled = max(1, math.ceil(labeled_ratio * len(train) - 1e-9))
    if not 1 <= num_labeled <= len(train):
        raise SplitError(
            f"num_labeled={num_labeled} outside [1, {len(train)}]: the {len(ids)} labeled cases "
            f"minus {num_test} test and {num_val} validation leave {len(train)} for training. "
            "Fewer cases than expected? The prepared data set may come from other settings (a "
            "phantom generated with another data.phantom.num_cases: delete its folder to "
            "regenerate it); else lower data.module.num_labeled, num_val or num_test"
        )
    labeled = sorted(train[:num_labeled])
    unlabeled = sorted(train[num_labeled:]) + sorted(set(unlabeled_only))
    return Split(labeled, unlabeled, sorted(val), sorted(test))


def is_excluded(fields: Mapping[str, Any], exclude: Mapping[str, Any]) -> bool:
    """Whether a case with these fields (``dataset.json`` extras, cache index entries) matches
    any ``data.module.exclude`` entry (e.g. ``{modality: MRI}``)."""
    return any(fields.get(k) == v for k, v in exclude.items())


def resolve_split(
    all_ids: Sequence[str],
    labeled: Sequence[str],
    unlabeled: Sequence[str],
    split_file: str | Path | None = None,
    labeled_ratio: float | None = 0.2,
    num_labeled: int | None = None,
    num_val: int = 4,
    num_test: int = 6,
    seed: int = 0,
) -> Split:
    """The one split rule of the data module and of the data check.

    ``all_ids``: every case of the data set; ``labeled`` / ``unlabeled``: the cases kept after
    ``exclude``, with and without labels. A ``split_file`` is loaded with the excluded cases taken
    out (e.g. AMOS MRI leaves the committed split instead of failing its validation); without
    one the split is drawn from the kept cases (:func:`make_split`).
    """
    if split_file:
        excluded = set(all_ids) - set(labeled) - set(unlabeled)
        return load_split_file(split_file).without(excluded)
    return make_split(
        labeled,
        labeled_ratio=labeled_ratio,
        num_labeled=num_labeled,
        num_val=num_val,
        num_test=num_test,
        seed=seed,
        unlabeled_only=unlabeled,
    )
