"""Class names of the data sets the project knows (label id = list index, 0 = background)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

SYNAPSE_CLASSES: tuple[str, ...] = (
    "background",
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_splenic_veins",
    "pancreas",
    "right_adrenal_gland",
    "left_adrenal_gland",
)

AMOS_CLASSES: tuple[str, ...] = (
    "background",
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "pancreas",
    "right_adrenal_gland",
    "left_adrenal_gland",
    "duodenum",
    "bladder",
    "prostate_uterus",
)


def clean_class_name(name: object) -> str:
    """A class name usable in metric keys (``val/dice_<name>``): Unicode NFKC, lower case, every
    run of characters other than letters (any script), digits and ``_`` turned into one ``_``;
    ``""`` when nothing is left.

    ``"prostate/uterus"`` -> ``"prostate_uterus"``, ``"Right Kidney"`` -> ``"right_kidney"``,
    ``"печень"`` -> ``"печень"`` (non-Latin names stay readable, never collapse to one string).
    """
    text = unicodedata.normalize("NFKC", str(name)).casefold()
    return re.sub(r"[\W_]+", "_", text).strip("_")


def clean_class_names(names: Sequence[object], source: str = "class names") -> list[str]:
    """:func:`clean_class_name` of every name (``class_<id>`` for one with nothing left), refusing
    two names that clean to the same string: their results would be merged into one column.

    Raises ``ValueError`` naming ``source``, both original names with their ids, and the fix."""
    cleaned = [clean_class_name(n) or f"class_{i}" for i, n in enumerate(names)]
    assert_unique_class_names(cleaned, names, source)
    return cleaned


def assert_unique_class_names(
    names: Sequence[str], originals: Sequence[object] | None = None, source: str = "class names"
) -> None:
    """Raises ``ValueError`` when ``names`` (index = label id) repeat a name, showing the ids and
    (``originals``) the names as written."""
    originals = list(names) if originals is None else list(originals)
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        seen.setdefault(str(name), []).append(i)
    clashes = {n: ids for n, ids in seen.items() if len(ids) > 1}
    if clashes:
        shown = "; ".join(
            " and ".join(f"{originals[i]!r} (id {i})" for i in ids) + f" -> {n!r}"
            for n, ids in clashes.items()
        )
        raise ValueError(
            f"{source}: class names that are the same once cleaned for metric keys: {shown}. "
            "Their results would be merged into one column. Give each class a distinct name"
        )
