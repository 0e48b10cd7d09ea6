"""Figures of the notebooks (``notebooks/*.ipynb``): a prepared data set, the results of a sweep and
what SCDL does to the feature space. Each function draws on matplotlib axes it is given (nothing is
written, no backend is switched), so the notebooks stay short and the package stays the one copy.

Data (``01_data``): :func:`load_split`, :func:`case_class_volumes`, :func:`draw_planes`,
:func:`draw_case_volumes`, :func:`draw_split_volumes`.

Results (``02_results``): :func:`scdl.runs.find_training_runs`, :func:`describe_runs`, :func:`collect_results`
(the records of :func:`scdl.reporting.paper_table.build_table`), :func:`draw_validation_curves`,
:func:`small_organ_cases`, :func:`draw_prediction`; :func:`wandb_records` for runs on W&B.

Embeddings (``03_scdl_embeddings``): :func:`token_embeddings`, :func:`module_at_init`,
:func:`project_2d`, :func:`draw_token_cloud`, :func:`centroid_accuracy`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from scdl.data.cache import load_cached_case, read_index
from scdl.data.class_stats import class_voxel_counts
from scdl.reporting.records import PaperRecord, collect_runs, method_label, run_record
from scdl.runs import (
    CHECKPOINTS,
    PAPER_RESULTS,
    RUN_CONFIG,
    SPLIT_FILE,
    TRAIN_TEST_STEM,
    find_training_runs,
    load_config,
    metric_series,
    read_split,
)

log = logging.getLogger(__name__)

CMAP = "tab20"  # the class colours of the proxy figure, the dashboard and the W&B overlays


def class_colour(c: int | np.integer) -> tuple[float, float, float]:
    """RGB of class id ``c`` (``tab20``, as every other figure of the project)."""
    import matplotlib.pyplot as plt

    return cast(tuple[float, float, float], tuple(plt.get_cmap(CMAP)(c % 20)[:3]))


def save_figure(fig: Any, folder: str | Path | None, name: str, dpi: int = 100) -> None:
    """Also writes ``fig`` to ``folder/name`` when ``folder`` is set (the notebooks' ``FIGURES``:
    ``docs/`` for the README figures). Returns nothing, so a notebook cell ending with it shows
    only the figure."""
    if folder:
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")


# ----------------------------------------------------------------------------------------------
# A prepared data set (notebook 01)
# ----------------------------------------------------------------------------------------------


def load_split(
    cache_dir: str | Path, split: str | Path | None = None, overrides: Sequence[str] = ()
):
    """The split of a prepared data set.

    Args:
        cache_dir: the preprocessed cache (folder with ``index.json``).
        split: a split file or a run folder holding ``split.json``; None draws the split as training
            would, from ``conf/data/phantom.yaml`` and ``overrides`` (e.g. ``data=amos`` or
            ``data.module.num_test=1``) with ``data.cache_dir`` set to ``cache_dir``.

    Returns a :class:`scdl.data.splits.Split`.
    """
    from scdl.data.splits import load_split_file

    if split:
        path = Path(split)
        return load_split_file(path / SPLIT_FILE if path.is_dir() else path)
    from hydra.utils import instantiate

    from scdl.utils.config import compose_config

    cfg = compose_config(
        "train", [*overrides, f"data.cache_dir={Path(cache_dir).resolve()}", "logger=csv"]
    )
    module = instantiate(cfg.data.module, _convert_="all")
    return module.prepare_split()


def case_class_volumes(cache_dir: str | Path, case_ids: Sequence[str]) -> np.ndarray:
    """(cases, C) volume of every class in every case, in mL (voxel counts x voxel volume of the
    cache grid), background included at index 0."""
    cache = Path(cache_dir)
    num_classes = len(read_index(cache)["class_names"])
    out = np.zeros((len(case_ids), num_classes))
    for i, cid in enumerate(case_ids):
        spacing = json.loads((cache / f"{cid}.json").read_text())["spacing"]
        out[i] = class_voxel_counts(cache, (cid,), num_classes) * float(np.prod(spacing)) / 1000.0
    return out


def focus_point(label: np.ndarray, class_index: int | None = None) -> tuple[int, int, int]:
    """A voxel to slice through: the centre of mass of ``class_index`` (of the smallest foreground
    class present when None; the volume centre when the label is empty)."""
    label = np.asarray(label)
    if class_index is None:
        counts = np.bincount(label.ravel())
        present = [c for c in range(1, len(counts)) if counts[c] > 0]
        class_index = min(present, key=lambda c: counts[c]) if present else None
    where = np.argwhere(label == class_index) if class_index is not None else np.empty((0, 3))
    if len(where) == 0:
        return cast(tuple[int, int, int], tuple(s // 2 for s in label.shape))
    return cast(tuple[int, int, int], tuple(int(round(v)) for v in where.mean(0)))


def _planes(volume: np.ndarray, point: Sequence[int]) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal planes of a RAS volume through ``point``, in radiological view
    (anterior / superior up, the patient's right on the left)."""
    from scdl.utils.display import to_display

    x, y, z = point
    return {
        "axial": to_display(volume[:, :, z]),
        "coronal": to_display(volume[:, y, :]),
        "sagittal": to_display(volume[x, :, :]),
    }


def label_rgba(label2d: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W) class ids -> (H, W, 4) colours, background transparent."""
    table = np.array([(*class_colour(c), alpha) for c in range(max(1, int(label2d.max()) + 1))])
    rgba = table[label2d.astype(np.int64)]
    rgba[label2d == 0, 3] = 0.0
    return rgba


def draw_planes(
    axes: Sequence[Any],
    image: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    point: Sequence[int] | None = None,
    alpha: float = 0.5,
) -> list[int]:
    """The three planes of ``image`` through ``point`` (default :func:`focus_point`) on three axes,
    the label as a coloured overlay. Returns the class ids visible, for :func:`class_legend`."""
    point = tuple(point) if point is not None else focus_point(label)
    images, labels = _planes(np.asarray(image), point), _planes(np.asarray(label), point)
    sx, sy, sz = (float(s) for s in spacing)
    aspects = {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}
    where = {"axial": f"z={point[2]}", "coronal": f"y={point[1]}", "sagittal": f"x={point[0]}"}
    shown: set[int] = set()
    for ax, name in zip(axes, ("axial", "coronal", "sagittal"), strict=True):
        lo, hi = np.percentile(image, [0.5, 99.5])
        ax.imshow(images[name], cmap="gray", vmin=lo, vmax=hi, aspect=aspects[name])
        ax.imshow(label_rgba(labels[name], alpha), aspect=aspects[name], interpolation="nearest")
        ax.set_title(f"{name} ({where[name]})", fontsize=9)
        ax.set_axis_off()
        shown |= {int(c) for c in np.unique(labels[name]) if c > 0}
    return sorted(shown)


def class_legend(fig: Any, class_ids: Sequence[int], class_names: Sequence[str], **kwargs) -> Any:
    """A figure legend of coloured patches named by organ."""
    import matplotlib.patches as mpatches

    handles = [
        mpatches.Patch(color=class_colour(c), label=str(class_names[c]).replace("_", " "))
        for c in class_ids
    ]
    opts = {"loc": "lower center", "ncol": min(7, max(1, len(handles))), "fontsize": 8}
    opts.update(kwargs)
    return fig.legend(handles=handles, frameon=False, **opts)


def draw_case_volumes(
    ax: Any,
    volumes: np.ndarray,
    class_names: Sequence[str],
    labeled: Sequence[bool] | np.ndarray | None = None,
) -> None:
    """Class volume (mL, log scale) of every case: one dot per case and class, the labeled cases
    of the split filled, the others hollow; the median per class as a bar."""
    fg = np.asarray(volumes)[:, 1:]
    names = [str(n).replace("_", " ") for n in class_names[1:]]
    labeled = np.ones(len(fg), bool) if labeled is None else np.asarray(labeled, bool)
    rng = np.random.default_rng(0)
    x = np.arange(fg.shape[1])
    for c in x:
        jitter = rng.uniform(-0.18, 0.18, len(fg))
        present = fg[:, c] > 0
        colour = class_colour(c + 1)
        for mask, face in ((present & ~labeled, "none"), (present & labeled, colour)):
            ax.scatter(
                c + jitter[mask], fg[mask, c], s=14, facecolors=face, edgecolors=colour, lw=0.8
            )
        if present.any():
            med = float(np.median(fg[present, c]))
            ax.hlines(med, c - 0.3, c + 0.3, colors="black", lw=1.2)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("volume per case (mL, log scale)")
    ax.grid(axis="y", which="both", alpha=0.3)


def draw_split_volumes(
    ax: Any, counts: np.ndarray, class_names: Sequence[str], minority: Sequence[int] = ()
) -> None:
    """Voxels per class over a split part (``class_voxel_counts``), log scale, the ``minority``
    class ids hatched, and the ratio of the largest to the smallest class in the title."""
    fg = np.asarray(counts, dtype=float)[1:]
    names = [str(n).replace("_", " ") for n in class_names[1:]]
    x = np.arange(len(fg))
    bars = ax.bar(x, np.where(fg > 0, fg, np.nan), color=[class_colour(c + 1) for c in x])
    for c, bar in zip(x, bars, strict=True):
        if c + 1 in minority:
            bar.set_hatch("///")
            bar.set_edgecolor("black")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("voxels (log scale)")
    present = fg[fg > 0]
    if len(present):
        ax.set_title(f"largest / smallest class: {present.max() / present.min():,.0f}x", fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)


# ----------------------------------------------------------------------------------------------
# The runs of a log folder (notebook 02)
# ----------------------------------------------------------------------------------------------


def _run_config(run: Path):
    cfg = load_config(run)
    if cfg is None:
        raise FileNotFoundError(f"{run / RUN_CONFIG}: not a run folder (no saved config)")
    return cfg


def describe_runs(runs: Sequence[Path], root: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per run: where it is, what it is (method, experiment, ablation, seed) and how far it
    got (last step, best validation Dice and its step, test Dice, paper-protocol evaluation)."""
    from scdl.metrics.results import load_metrics

    rows = []
    for run in runs:
        cfg = _run_config(run)
        series = metric_series(run)
        steps = [int(s.max()) for k, (s, _) in series.items() if k.startswith("train/") and len(s)]
        row: dict[str, Any] = {
            "run": str(run.relative_to(root)) if root is not None else str(run),
            "method": method_label(cfg),
            "experiment": str(cfg.get("experiment_name")),
            "ablation": str(cfg.get("ablation_name")),
            "seed": cfg.get("seed"),
            "steps": max(steps) + 1 if steps else None,
            "best val Dice %": None,
            "best step": None,
            "test Dice %": None,
            "paper eval": (run / PAPER_RESULTS).is_file(),
        }
        if "val/dice" in series:
            s, v = series["val/dice"]
            best = int(np.nanargmax(v))
            row["best val Dice %"] = round(100 * float(v[best]), 1)
            row["best step"] = int(s[best]) + 1  # validation after N steps is logged at N - 1
        test = run / f"{TRAIN_TEST_STEM}.json"
        if test.is_file():
            row["test Dice %"] = round(100 * load_metrics(test)["overall"]["dice"]["mean"], 1)
        rows.append(row)
    return rows


def markdown_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of dict rows (the keys of the first row are the columns)."""
    if not rows:
        return ""
    heads = list(rows[0])
    cell = lambda v: "–" if v is None else str(v)  # noqa: E731
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(cell(r.get(h)) for h in heads) + " |" for r in rows]
    return "\n".join(lines)


def collect_results(runs: Sequence[Path]) -> tuple[list[PaperRecord], str]:
    """Records for :func:`scdl.reporting.paper_table.build_table`, and which results they hold.

    The papers' protocol (``<run>/eval/test_paper/metrics.json``, written by ``post_eval=[paper]``
    or ``src/eval.py ... protocol=paper``) where any run has it, else the training test
    (``<run>/test_metrics.json``: Dice on the cache grid, no ASD)."""
    from scdl.metrics.results import load_metrics

    records = collect_runs(list(runs))
    if records:
        return records, "paper protocol (eval/test_paper)"
    for run in runs:
        path = run / f"{TRAIN_TEST_STEM}.json"
        cfg = load_config(run)
        if not path.is_file() or cfg is None:
            continue
        # the training test scores Dice only: no ASD
        records.append(run_record(run, cfg, load_metrics(path), asd=False))
    return records, "training test (test_metrics.json, Dice only)"


def draw_validation_curves(ax: Any, runs: Sequence[Path]) -> None:
    """``val/dice`` of every run over training steps, one colour per method (seeds share it)."""
    colours: dict[str, Any] = {}
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for run in runs:
        series = metric_series(run)
        if "val/dice" not in series:
            continue
        method = method_label(_run_config(run))
        first = method not in colours
        colours.setdefault(method, cycle[len(colours) % len(cycle)])
        steps, values = series["val/dice"]
        ax.plot(
            steps + 1,
            100 * values,
            marker="o",
            ms=3,
            color=colours[method],
            label=method if first else None,
            alpha=0.85,
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("validation Dice %")
    if colours:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _per_case_dice(run: Path) -> tuple[dict[str, dict[str, float | None]], list[str]]:
    """``{case: {class: dice}}`` of the run's test (paper protocol if evaluated, else training)."""
    from scdl.metrics.results import load_metrics

    path = run / PAPER_RESULTS
    if not path.is_file():
        path = run / f"{TRAIN_TEST_STEM}.json"
    m = load_metrics(path)
    cases = {
        row["case"]: {c: (v or {}).get("dice") for c, v in row["values"].items()}
        for row in m["per_case"]
    }
    return cases, list(m["classes"])


def small_organ(runs: Sequence[str | Path], k: int = 4, min_dice: float = 0.05) -> dict[str, Any]:
    """The small organ to show for ``runs`` (of one data set and split).

    Classes are ranked by their voxels in the labeled training cases (the first run's split,
    :func:`smallest_classes`); the organ is the smallest one that the runs segment with a test Dice
    of at least ``min_dice`` (averaged over the runs and their test cases), so the overlays show
    how far down the ranking the methods get; the smallest class when no run segments any.
    Returns ``class_name``, ``class_index``, ``rank`` (1 = smallest), ``num_classes`` (foreground),
    ``mean_dice`` and ``minority`` (the names of the ``k`` smallest).
    """
    from scdl.data.class_stats import smallest_classes

    paths = [Path(r) for r in runs]
    cfg = _run_config(paths[0])
    split = cast(dict, read_split(paths[0]))  # every training run folder holds split.json
    per_run = [_per_case_dice(run) for run in paths]
    classes = per_run[0][1]
    cache = Path(str(cfg.data.cache_dir))
    order = smallest_classes(cache, split["labeled"], len(classes) + 1, len(classes))

    def mean_dice(c: int) -> float:
        name = classes[c - 1]
        vals = [
            cast(float, d[name])
            for cases, _ in per_run
            for d in cases.values()
            if d.get(name) is not None
        ]
        return float(np.mean(vals)) if vals else 0.0

    chosen = next((c for c in order if mean_dice(c) >= min_dice), order[0])
    return {
        "class_name": classes[chosen - 1],
        "class_index": chosen,
        "rank": order.index(chosen) + 1,
        "num_classes": len(order),
        "mean_dice": mean_dice(chosen),
        "minority": [classes[c - 1] for c in order[:k]],
    }


def best_and_worst_cases(run: str | Path, class_name: str) -> dict[str, tuple[str, float]]:
    """``{"best": (case, dice), "worst": (case, dice)}``: the test cases where ``run`` segments
    ``class_name`` best and worst (ties: the first case id)."""
    cases, _ = _per_case_dice(Path(run))
    scored = sorted(
        (
            (case, float(cast(float, d[class_name])))
            for case, d in cases.items()
            if d.get(class_name) is not None
        ),
        key=lambda cd: (-cd[1], cd[0]),
    )
    if not scored:
        raise ValueError(f"{run}: no test Dice of {class_name!r}")
    worst = min(scored, key=lambda cd: (cd[1], cd[0]))
    return {"best": scored[0], "worst": worst}


def predict_case(module: Any, cache_dir: str | Path, case_id: str):
    """(image, label, prediction) of a cached case on the cache grid (float32, CPU)."""
    import torch

    from scdl.inference.segment import segment_volume

    case = load_cached_case(cache_dir, case_id)
    pred = segment_volume(module, case.image, torch.device("cpu"), precision=None)
    return case.image, case.label, pred


def draw_prediction(
    ax: Any,
    image: np.ndarray,
    label: np.ndarray,
    prediction: np.ndarray,
    class_index: int,
    title: str = "",
) -> int:
    """The axial slice holding most of ``class_index``: the prediction filled, the ground truth
    outlined, both in the class colours, zoomed on the organ. Returns the slice index."""
    from scdl.utils.display import slice_class_counts, to_display

    num = int(max(label.max(), prediction.max(), class_index)) + 1
    z = int(slice_class_counts(label, num)[:, class_index].argmax())
    img, truth, pred = (to_display(v[:, :, z]) for v in (image, label, prediction))
    lo, hi = np.percentile(img, [0.5, 99.5])
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    ax.imshow(label_rgba(pred, 0.45), interpolation="nearest")
    for c in np.unique(truth):
        if c > 0:
            width = 2.0 if c == class_index else 0.8
            ax.contour(truth == c, levels=[0.5], colors=[class_colour(int(c))], linewidths=width)
    rows, cols = np.nonzero(truth == class_index)
    if len(rows):  # zoom: the organ with a margin of a third of the slice
        half = max(img.shape) // 6 + max(np.ptp(rows), np.ptp(cols)) // 2
        rc, cc = int(rows.mean()), int(cols.mean())
        ax.set_xlim(max(0, cc - half), min(img.shape[1], cc + half))
        ax.set_ylim(min(img.shape[0], rc + half), max(0, rc - half))
    ax.set_title(f"{title} (axial z={z})", fontsize=9)
    ax.set_axis_off()
    return z


def parse_wandb_target(text: str) -> tuple[str, str | None]:
    """``entity/project`` -> (``entity/project``, None); ``entity/project/<group>`` -> the path and
    the group (a ``sweep_name``, which may hold ``/`` itself)."""
    parts = text.strip().strip("/").split("/", 2)
    if len(parts) < 2:
        raise ValueError(f"{text!r}: expected entity/project or entity/project/<group>")
    return "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None)


def wandb_records(path: str, group: str | None = None, api: Any = None) -> list[dict[str, Any]]:
    """Runs of a W&B project (``entity/project``), optionally one sweep (``group``): method, seed,
    the ``val/dice`` curve and the per-class test Dice of the run summary (``test/dice_<class>``).

    ``api`` defaults to ``wandb.Api()`` (needs the network and ``WANDB_API_KEY``)."""
    if api is None:
        import wandb

        api = wandb.Api()
    filters = {"group": group} if group else None
    records = []
    for run in api.runs(path, filters=filters):
        config, summary = dict(run.config), dict(run.summary)
        steps, values = [], []
        for row in run.scan_history(keys=["trainer/global_step", "val/dice"]):
            if row.get("val/dice") is not None:
                steps.append(int(row["trainer/global_step"]))
                values.append(float(row["val/dice"]))
        per_class = {
            k.removeprefix("test/dice_"): float(v)
            for k, v in summary.items()
            if k.startswith("test/dice_")
            and isinstance(v, int | float)
            and k != "test/dice_minority"
        }
        # the tables' row names (the baseline arm of an SCDL experiment is named without SCDL)
        named = config.get("method_name") or config.get("experiment_name")
        method = method_label(config) if named else str(run.name)
        test = summary.get("test/dice")
        records.append(
            {
                "name": run.name,
                "group": getattr(run, "group", group),
                "method": method,
                "seed": config.get("seed"),
                "val_dice": (np.asarray(steps), np.asarray(values)),
                "test_dice": float(test) if isinstance(test, int | float) else math.nan,
                "per_class": per_class,
            }
        )
    return records


# ----------------------------------------------------------------------------------------------
# Token embeddings and class proxies (notebook 03)
# ----------------------------------------------------------------------------------------------


@dataclass
class TokenCloud:
    """Token embeddings of a few volumes and the class proxies, for a 2-D picture.

    Attributes:
        embeddings: (N, D) unit vectors: SCDL's embeddings ``z_hat`` for an SCDL run, the
            L2-normalised pooled decoder features for a run without SCDL.
        classes: (N,) majority ground-truth class of each token.
        proxies: (C, D) normalised proxy means (SCDL), else None.
        class_names: C names, background first.
        space: what the embeddings are (for titles).
    """

    embeddings: np.ndarray
    classes: np.ndarray
    proxies: np.ndarray | None
    class_names: list[str]
    space: str

    def centres(self) -> np.ndarray:
        """(C, D) normalised mean embedding per class (NaN for classes without tokens)."""
        out = np.full((len(self.class_names), self.embeddings.shape[1]), np.nan)
        for c in np.unique(self.classes):
            mean = self.embeddings[self.classes == c].mean(0)
            out[c] = mean / max(np.linalg.norm(mean), 1e-12)
        return out


def volume_crops(volume: Any, roi: Sequence[int]) -> list[Any]:
    """Non-overlapping ``roi`` crops tiling the last three dims of ``volume`` (a tensor; zero padded
    to a multiple of ``roi``), so tokens of every organ are seen, not only the centre's."""
    import torch

    pad = []
    for size, r in zip(reversed(volume.shape[-3:]), reversed(list(roi)), strict=True):
        pad += [0, (-size) % r]
    padded = torch.nn.functional.pad(volume, pad)
    crops = []
    sx, sy, sz = padded.shape[-3:]
    rx, ry, rz = roi
    for x in range(0, sx, rx):
        for y in range(0, sy, ry):
            for z in range(0, sz, rz):
                crops.append(padded[..., x : x + rx, y : y + ry, z : z + rz])
    return crops


def token_embeddings(
    module: Any, cache_dir: str | Path, case_ids: Sequence[str], max_crops: int | None = None
) -> TokenCloud:
    """Token embeddings of ``case_ids`` (cached volumes) under ``module``, with their classes.

    Each volume is tiled into crops of the inference window; a crop's decoder features (the
    plug-in host's, :meth:`plugin_features`) are pooled into tokens on the SCDL token grid
    (``plugin.token_grid``; window / 8 per axis without SCDL) and, for SCDL, encoded into the
    z-space (``plugin.scdl(...).embeddings``). Each token's class is the majority of its voxels
    (``labels_to_token_dist``). Float32, no gradients, on the module's device.
    """
    import torch
    import torch.nn.functional as F

    from scdl.models.scdl import feature_map_to_tokens, labels_to_token_dist

    plugin: Any = getattr(module, "plugin", None)
    has_scdl = hasattr(plugin, "scdl")
    roi = tuple(int(r) for r in module.inference_cfg.roi_size)
    grid = int(plugin.token_grid) if has_scdl else max(1, min(roi) // 8)
    names = list(module.class_names)
    device = next(module.parameters()).device
    embs, classes = [], []
    with torch.no_grad():
        for cid in case_ids:
            case = load_cached_case(cache_dir, cid)
            image = torch.as_tensor(np.asarray(case.image, np.float32))[None, None]
            label = torch.as_tensor(np.asarray(case.label, np.int64))[None]
            pairs = list(zip(volume_crops(image, roi), volume_crops(label, roi), strict=True))
            for img, lab in pairs[:max_crops]:
                x = module.to_memory_format(img.to(device))
                features = module.plugin_features(x).float()
                tokens = feature_map_to_tokens(features, grid)
                y_dist = labels_to_token_dist(lab.to(device), len(names), grid)
                if has_scdl:
                    out = plugin.scdl(tokens, y_dist=y_dist, sample_embeddings=False)
                    emb = out.embeddings
                else:
                    emb = F.normalize(tokens, dim=-1)
                embs.append(emb[0].cpu().numpy())
                classes.append(y_dist[0].argmax(-1).cpu().numpy())
    proxies = plugin.scdl.proxy_means().detach().cpu().numpy() if has_scdl else None
    space = "SCDL embedding space (z)" if has_scdl else "decoder features, pooled per token"
    return TokenCloud(np.concatenate(embs), np.concatenate(classes), proxies, names, space)


def latest_run(root: str | Path, scdl: bool) -> Path | None:
    """The newest run below ``root`` (by its newest checkpoint) that has a checkpoint and was
    trained with (``scdl=True``) or without the SCDL plug-in; None when there is none."""
    found = []
    for run in find_training_runs(root):
        ckpts = list((run / CHECKPOINTS).glob("*.ckpt"))
        if ckpts and (_run_config(run).get("scdl") is not None) == scdl:
            found.append((max(p.stat().st_mtime for p in ckpts), str(run)))
    return Path(max(found)[1]) if found else None


def module_at_init(cfg: Any, seed: int | None = None) -> Any:
    """The module of a run's config (as returned by :func:`load_module_from_checkpoint`) freshly
    initialised with the run's seed (or ``seed``): the feature space before training."""
    import lightning as L

    from scdl.build import build_module

    L.seed_everything(int(seed if seed is not None else cfg.get("seed") or 0), verbose=False)
    return build_module(cfg).eval()


def project_2d(points: np.ndarray, method: str = "auto") -> tuple[np.ndarray, str]:
    """(N, D) -> (N, 2): UMAP (cosine) when ``method`` is ``umap`` or ``auto`` and ``umap-learn`` is
    installed, else PCA (:func:`scdl.utils.display.pca_2d`). Returns the points and the
    method used."""
    if method in ("auto", "umap"):
        try:
            import umap

            reducer = umap.UMAP(n_components=2, metric="cosine", random_state=0)
            return np.asarray(reducer.fit_transform(points)), "UMAP"
        except ImportError:
            if method == "umap":
                raise
    import torch

    from scdl.utils.display import pca_2d

    return pca_2d(torch.as_tensor(points, dtype=torch.float64)).numpy(), "PCA"


def subsample_per_class(classes: np.ndarray, max_per_class: int, seed: int = 0) -> np.ndarray:
    """Indices keeping at most ``max_per_class`` tokens of each class (small organs stay visible
    next to the thousands of background tokens)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        keep.extend(rng.choice(idx, min(len(idx), max_per_class), replace=False).tolist())
    return np.asarray(sorted(keep), dtype=np.int64)


def draw_token_cloud(
    ax: Any,
    cloud: TokenCloud,
    title: str = "",
    max_per_class: int = 80,
    projection: str = "auto",
) -> str:
    """Tokens (dots, by class) and the class proxies (stars; the class centres, diamonds, when the
    run has no SCDL) projected together to 2-D. Returns the projection used."""
    keep = subsample_per_class(cloud.classes, max_per_class)
    anchors = cloud.proxies if cloud.proxies is not None else np.nan_to_num(cloud.centres())
    present = sorted(int(c) for c in np.unique(cloud.classes))
    if cloud.proxies is None:
        anchors = anchors[present]
    xy, method = project_2d(np.concatenate([cloud.embeddings[keep], anchors]), projection)
    tok, anc = xy[: len(keep)], xy[len(keep) :]
    for c in present:
        sel = cloud.classes[keep] == c
        ax.scatter(*tok[sel].T, s=7, alpha=0.45, color=class_colour(c))
    ids = range(len(anchors)) if cloud.proxies is not None else present
    marker = "*" if cloud.proxies is not None else "D"
    for c, (px, py) in zip(ids, anc, strict=True):
        ax.scatter(
            px,
            py,
            marker=marker,
            s=200 if marker == "*" else 60,
            color=class_colour(c),
            edgecolor="black",
            zorder=3,
        )
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return method


def centroid_accuracy(cloud: TokenCloud, use_proxies: bool = False) -> dict[str, float]:
    """Per class: the fraction of its tokens whose most similar class centre (cosine; the SCDL
    proxies with ``use_proxies``) is its own, a number for how separated the classes are."""
    anchors = cloud.proxies if use_proxies and cloud.proxies is not None else cloud.centres()
    sims = cloud.embeddings @ np.nan_to_num(anchors, nan=0.0).T
    sims[:, np.isnan(anchors).any(1)] = -np.inf
    nearest = sims.argmax(1)
    return {
        cloud.class_names[c]: float((nearest[cloud.classes == c] == c).mean())
        for c in sorted(np.unique(cloud.classes).tolist())
    }
