"""What the SCDL head prior does over a long training: per saved checkpoint of one run, Dice on its
labeled (training) scans and on its validation scans, with the prior and without it, how large the
prior is beside the features it is added to, and whether it carries the token's class.

``python -m scdl.reporting.prior_diagnostics <run folder> [--every 200] [-o out.json]`` reads
``<run>/periodic/step*.ckpt`` (written by training with the periodic checkpoint override of
docs/results.md) and prints one JSON line per checkpoint; ``--table a.json b.json`` renders
saved diagnostics as Markdown. Per checkpoint (means over the scans of the split part):

- ``<part>_dice``: mean foreground Dice of whole-scan inference as the run tests (eval mode,
  sliding window, the prior where the model has one);
- ``<part>_dice_no_prior``: the same with the prior term left out (``head(features)``): how much
  of the prediction the prior carries;
- ``<part>_prior_ratio``: ``||up(conv(prior grid))|| / ||features||`` on a central patch: the
  size of what the prior adds to the head's input;
- ``<part>_prior_class_acc``: how often the prior token's class (argmax of its proxy assignment
  ``p2e``) is the token's majority label class on that patch (1/C: chance).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from scdl.runs import read_split

if TYPE_CHECKING:
    from scdl.plugins.scdl_plugin import SCDLPlugin


def foreground_dice(pred: np.ndarray, label: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in ``pred`` or ``label`` (same shape):
    :func:`scdl.metrics.dice.per_class_dice` with classes empty on both sides skipped."""
    from scdl.metrics.dice import per_class_dice

    scores = per_class_dice(pred, label, num_classes, absent="skip_both_empty").numpy()
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def token_class_accuracy(
    p2e: torch.Tensor, label: torch.Tensor, num_classes: int, grid: int
) -> float:
    """Share of tokens whose argmax ``p2e`` class (p2e: (1, t^3, C)) is the majority class of the
    token's window of ``label`` (X, Y, Z) (windows as SCDL's soft token labels)."""
    from scdl.models.scdl.tokens import labels_to_token_dist

    majority = labels_to_token_dist(label[None].long(), num_classes, grid).argmax(-1)  # (1, L)
    return float((p2e.argmax(-1) == majority).float().mean())


def central_patch(volume: torch.Tensor, size: int) -> tuple[slice, ...]:
    """Slices of the central ``size``^3 patch of a (..., X, Y, Z) volume (whole axes if smaller)."""
    starts = [max(0, (s - size) // 2) for s in volume.shape[-3:]]
    return tuple(slice(a, a + size) for a in starts)


def diagnose_checkpoint(
    ckpt: Path, split: dict, parts: Sequence[str] = ("labeled", "val"), precision: str = "auto"
) -> dict:
    """The diagnostics of one checkpoint (see the module docstring; its step is the caller's, read
    from the file name, so the checkpoint is read once); ``precision``: ``auto``
    (bf16 autocast where the CPU has native bf16, as training chose) or a Lightning string."""
    from scdl.inference.runtime import inference_context

    if precision == "auto":
        from scdl.utils.hardware import cpu_precision_choice

        precision = cpu_precision_choice().precision
    with inference_context(precision, torch.device("cpu")):
        return _diagnose(ckpt, split, parts)


def _diagnose(ckpt: Path, split: dict, parts: Sequence[str]) -> dict:
    from scdl.inference.checkpoint import load_module_from_checkpoint
    from scdl.inference.sliding_window import sliding_window_probs
    from scdl.models.scdl.tokens import tokens_to_grid

    module, cfg = load_module_from_checkpoint(ckpt)
    cache, num_classes = Path(cfg.data.cache_dir), int(cfg.data.num_classes)
    plugin = cast(  # the SCDL plug-in with the head prior, or None
        "SCDLPlugin | None",
        module.plugin if getattr(module.plugin, "prior_feedback", None) == "head" else None,
    )
    host = module.plugin_host
    patch = int(cfg.data.module.patch_size[0])
    out: dict[str, Any] = {}

    def plain(x: torch.Tensor) -> torch.Tensor:  # the head without the prior term
        return host.head(module.plugin_features(x))

    for part in parts:
        rows: dict[str, list[float]] = {}
        for case in split[part]:
            image = torch.from_numpy(np.load(cache / f"{case}_image.npy")).float()[None, None]
            label = np.load(cache / f"{case}_label.npy")
            pred = sliding_window_probs(module.segment, image, module.inference_cfg).argmax(1)
            rows.setdefault("dice", []).append(foreground_dice(pred[0].numpy(), label, num_classes))
            if plugin is None:
                continue
            pred = sliding_window_probs(plain, image, module.inference_cfg).argmax(1)
            rows.setdefault("dice_no_prior", []).append(
                foreground_dice(pred[0].numpy(), label, num_classes)
            )
            where = central_patch(image, patch)
            # a named tuple: mypy reads image[(..., *w)] as Python 3.11's image[..., *w]
            window: tuple[EllipsisType | slice, ...] = (..., *where)
            features = module.plugin_features(image[window]).float()
            scdl_out = plugin.scdl(plugin.tokens(features), sample_embeddings=False)
            grid = tokens_to_grid(scdl_out.prior_tokens, plugin.token_grid)
            assert plugin.prior_to_feat is not None  # built for the head prior
            prior = F.interpolate(
                plugin.prior_to_feat(grid.to(features.dtype)),
                size=features.shape[2:],
                mode="trilinear",
                align_corners=False,
            )
            rows.setdefault("prior_ratio", []).append(float(prior.norm() / features.norm()))
            patch_label = torch.from_numpy(label[where].astype(np.int64))
            rows.setdefault("prior_class_acc", []).append(
                token_class_accuracy(scdl_out.p2e, patch_label, num_classes, plugin.token_grid)
            )
        out.update({f"{part}_{k}": float(np.mean(v)) for k, v in rows.items()})
    return out


def diagnose_run(run: Path, every: int = 200, precision: str = "auto") -> list[dict]:
    """:func:`diagnose_checkpoint` of every ``periodic/step*.ckpt`` of ``run`` whose step is a
    multiple of ``every``."""
    split = cast(dict, read_split(run))  # training writes split.json into the run folder
    ckpts = sorted((run / "periodic").glob("step*.ckpt"))
    if not ckpts:
        raise SystemExit(
            f"{run}/periodic holds no step*.ckpt: train with the periodic checkpoints of "
            "docs/results.md (+callbacks.periodic...)"
        )
    rows = []
    for ckpt in ckpts:
        step = int(ckpt.stem.removeprefix("step"))  # the periodic file name holds global_step
        if step % every:
            continue
        row = {"step": step, **diagnose_checkpoint(ckpt, split, precision=precision)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(diagnostics: dict[str, list[dict]]) -> str:
    """One row per (run, step): Dice % on labeled and validation scans with / without the prior,
    the prior's size and its class accuracy ('–' where the run has no head prior)."""

    def pct(row: dict, key: str) -> str:
        return f"{row[key] * 100:.1f}" if key in row else "–"

    def num(row: dict, key: str) -> str:
        return f"{row[key]:.2f}" if key in row else "–"

    lines = [
        "| run | step | labeled Dice | labeled, prior removed | val Dice | val, prior removed "
        "| prior / features (val) | prior class accuracy labeled / val |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in diagnostics.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['step']} | {pct(r, 'labeled_dice')} | "
                f"{pct(r, 'labeled_dice_no_prior')} | {pct(r, 'val_dice')} | "
                f"{pct(r, 'val_dice_no_prior')} | {num(r, 'val_prior_ratio')} | "
                f"{pct(r, 'labeled_prior_class_acc')} / {pct(r, 'val_prior_class_acc')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (or JSON with --table)")
    parser.add_argument("--every", type=int, default=200, help="every n-th step's checkpoint")
    parser.add_argument("-o", "--out", type=Path, default=None, help="write the rows as JSON")
    parser.add_argument("--table", action="store_true", help="render saved JSON files")
    parser.add_argument(
        "--precision", default="auto", help="auto (as training), 32-true, bf16-mixed"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(markdown({p.stem: json.loads(p.read_text()) for p in args.runs}))
        return
    if len(args.runs) != 1:
        raise SystemExit("give one run folder (or --table with saved JSON files)")
    rows = diagnose_run(args.runs[0], args.every, args.precision)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
