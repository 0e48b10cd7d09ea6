"""A screenshot-like picture of a training run's W&B panels, drawn with matplotlib from what it logged.

``python -m scdl.evaluation.dashboard <run dir> [-o docs/dashboard.png]``

Everything comes from the run folder, so it works on offline runs that were never synced:

- ``<run>/csv/metrics.csv`` (the CSV logger beside W&B): the ``val/dice`` curve (best point
  marked) and the training losses (``train/loss*``);
- ``<run>/wandb/*run-*/run-*.wandb`` (the W&B transaction log that ``wandb sync`` uploads), read
  with :func:`read_wandb_run`: run name, group, tags and summary, and which media files were
  logged at which step;
- ``<run>/wandb/*run-*/files/media/``: the latest per-class Dice table (``val/per_class_dice``,
  logged at each new best step), the latest segmentation overlays (``val/overlays``: image plus
  ground-truth and prediction masks) and the latest SCDL proxy figure (``scdl/proxies``).

A panel whose data is missing (no SCDL, no validation yet) is drawn empty with a note.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BLOCK = 32768  # LevelDB log block size of the .wandb file
HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


# ----------------------------------------------------------------------------------------------
# Reading an offline W&B run
# ----------------------------------------------------------------------------------------------


def iter_wandb_records(path: str | Path) -> Iterator[bytes]:
    """Serialized ``wandb_internal_pb2.Record`` messages of a ``.wandb`` file, in order.

    The file is a LevelDB-style log (what ``wandb sync`` reads): a 7-byte header, then 32 KiB
    blocks of chunks, each with a 7-byte header (CRC, length, type: full / first / middle / last
    piece of a record). A record cut off at the end (a run still writing) is dropped.
    """
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log (.wandb)")
    pos, pieces = HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer: zero padding
            pos += BLOCK - pos % BLOCK
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if pos > len(data):
            break
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pieces = chunk
        elif kind == MIDDLE:
            pieces += chunk
        elif kind == LAST:
            yield pieces + chunk
        else:  # zero type: pre-allocated space, skip the block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0


def _merge(target: dict, key: str, value: Any) -> None:
    """``target[key] = value``, dicts merged leaf by leaf as wandb-core's config tree does (a later
    update of ``_wandb`` keeps the ``_wandb.visualize`` entries of custom charts)."""
    if isinstance(value, dict):
        node = target.get(key)
        if not isinstance(node, dict):
            node = target[key] = {}
        for k, v in value.items():
            _merge(node, k, v)
    else:
        target[key] = value


def _set_item(target: dict, item: Any) -> None:
    """Decodes one history / summary / config item into ``target`` (nested keys -> nested dicts)."""
    keys = [item.key] if item.key else list(item.nested_key)
    value = json.loads(item.value_json) if item.value_json else None
    for key in keys[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    _merge(target, keys[-1], value)


@dataclass
class WandbRun:
    """What a W&B run folder (``offline-run-*`` or ``run-*``) recorded.

    Attributes:
        dirs: the run folders read (a resumed run has one per start), oldest first.
        name, group, project, job_type, tags: of the run record.
        config: the run config (the resolved Hydra config plus W&B's ``_wandb`` entries).
        summary: the final summary (``val/dice`` is ``{"max": ...}`` with ``summary="max"``).
        history: one dict per ``log`` call, media as their JSON descriptions; each row also
            carries ``_dir``, the folder its media paths are relative to (``<dir>/files/``).
        metrics: the ``define_metric`` records, by name or glob.
    """

    dirs: list[Path] = field(default_factory=list)
    name: str = ""
    group: str = ""
    project: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)

    def latest(self, key: str) -> dict | None:
        """The last history row that logged ``key``."""
        for row in reversed(self.history):
            if key in row:
                return row
        return None

    def media_path(self, row: dict, relative: str) -> Path:
        """A media file of a history row (``relative`` to the run's ``files/``)."""
        return Path(row["_dir"]) / "files" / relative


def wandb_run_dirs(run_dir: str | Path) -> list[Path]:
    """The W&B run folders (``<run>/wandb/offline-run-*`` or ``run-*``) of a training run, oldest
    first; ``run_dir`` may also be one such folder."""
    run_dir = Path(run_dir)
    if list(run_dir.glob("run-*.wandb")):
        return [run_dir]
    found = [
        d
        for d in (run_dir / "wandb").glob("*run-*")
        if d.is_dir() and not d.is_symlink() and list(d.glob("run-*.wandb"))
    ]
    return sorted(found, key=lambda d: d.name.split("-", 1)[-1])


def read_wandb_run(run_dir: str | Path) -> WandbRun:
    """Reads the ``.wandb`` transaction log(s) of a run (all starts of a resumed run, in order)."""
    from wandb.proto import wandb_internal_pb2 as pb

    dirs = wandb_run_dirs(run_dir)
    if not dirs:
        raise FileNotFoundError(f"no W&B run (wandb/*run-*/run-*.wandb) in {run_dir}")
    run = WandbRun(dirs=dirs)
    for d in dirs:
        for path in sorted(d.glob("run-*.wandb")):
            for data in iter_wandb_records(path):
                record = pb.Record()
                record.ParseFromString(data)
                kind = record.WhichOneof("record_type")
                if kind == "run":
                    r = record.run
                    run.name = r.display_name or run.name
                    run.group = r.run_group or run.group
                    run.project = r.project or run.project
                    run.job_type = r.job_type or run.job_type
                    run.tags = list(r.tags) or run.tags
                elif kind == "history":
                    row: dict = {"_dir": str(d)}
                    for item in record.history.item:
                        _set_item(row, item)
                    run.history.append(row)
                elif kind == "summary":
                    for item in record.summary.update:
                        _set_item(run.summary, item)
                    for item in record.summary.remove:
                        run.summary.pop(item.key or "/".join(item.nested_key), None)
                elif kind == "config":
                    for item in record.config.update:
                        _set_item(run.config, item)
                elif kind == "metric":
                    m = record.metric
                    run.metrics[m.name or m.glob_name] = {
                        "step_metric": m.step_metric,
                        "summary": [f.name for f, v in m.summary.ListFields() if v],
                    }
    return run


# ----------------------------------------------------------------------------------------------
# Reading the CSV log
# ----------------------------------------------------------------------------------------------


def read_metrics_csv(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``metrics.csv`` -> ``{key: (steps, values)}`` over the rows where the key has a value."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    series: dict[str, tuple[list, list]] = {}
    for row in rows:
        try:
            step = int(float(row.get("step") or ""))
        except ValueError:
            continue
        for key, text in row.items():
            if key in ("step", "epoch") or text in (None, ""):
                continue
            try:
                value = float(text)
            except ValueError:
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(step)
            values.append(value)
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in series.items()}


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------

BG, PANEL, EDGE, TEXT, MUTED = "#f4f5f7", "#ffffff", "#dfe1e5", "#1a1c1f", "#6b6f76"
LINE = ["#2f7cf6", "#e8590c", "#12b886", "#ae3ec9", "#f59f00"]


def _panel(ax: Any, title: str, subtitle: str = "") -> None:
    """W&B-like card: white, thin border, title top left."""
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_color(EDGE)
    ax.set_title(title, loc="left", fontsize=10, color=TEXT, fontweight="bold", pad=8)
    if subtitle:
        ax.text(1.0, 1.02, subtitle, transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    ax.tick_params(colors=MUTED, labelsize=8)
    ax.grid(True, color="#eceef1", linewidth=0.8)
    ax.set_axisbelow(True)


def _empty(ax: Any, title: str, note: str) -> None:
    _panel(ax, title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.text(0.5, 0.5, note, ha="center", va="center", color=MUTED, fontsize=9, wrap=True)


def _smooth(values: np.ndarray, weight: float = 0.6) -> np.ndarray:
    """W&B's default exponential moving average (debiased)."""
    out, last = np.empty_like(values, dtype=float), 0.0
    for i, v in enumerate(values):
        last = weight * last + (1 - weight) * v
        out[i] = last / (1 - weight ** (i + 1))
    return out


def _draw_val_dice(ax: Any, series: dict) -> tuple[int, float] | None:
    if "val/dice" not in series:
        _empty(ax, "val/dice", "no validation logged yet")
        return None
    steps, values = series["val/dice"]
    best = int(np.nanargmax(values))
    _panel(ax, "val/dice", f"best {values[best]:.3f} at step {steps[best]}")
    ax.plot(steps, values, color=LINE[0], linewidth=1.8, marker="o", markersize=3)
    ax.scatter([steps[best]], [values[best]], s=80, facecolor="none", edgecolor=LINE[1], zorder=3)
    ax.set_xlabel("trainer/global_step", fontsize=8, color=MUTED)
    return int(steps[best]), float(values[best])


def _draw_losses(ax: Any, series: dict) -> None:
    keys = sorted(k for k in series if k.startswith("train/loss"))
    if not keys:
        _empty(ax, "train losses", "no training loss logged")
        return
    _panel(ax, "train losses", ", ".join(k.removeprefix("train/") for k in keys))
    for i, key in enumerate(keys):
        steps, values = series[key]
        colour = LINE[i % len(LINE)]
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(steps, _smooth(values), color=colour, linewidth=1.6, label=key)
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    ax.set_xlabel("trainer/global_step", fontsize=8, color=MUTED)


def _per_class_rows(run: WandbRun | None, series: dict, best: tuple[int, float] | None):
    """(class, dice) rows and their source: the latest W&B table, else the CSV at the best step."""
    if run is not None and (row := run.latest("val/per_class_dice")) is not None:
        table = json.loads(run.media_path(row, row["val/per_class_dice"]["path"]).read_text())
        col = {c: i for i, c in enumerate(table["columns"])}
        rows = [(r[col["class"]], float(r[col["dice"]])) for r in table["data"]]
        return rows, f"W&B table, step {row.get('trainer/global_step', '?')}"
    if best is None:
        return [], ""
    rows = []
    for key, (steps, values) in sorted(series.items()):
        if key.startswith("val/dice_") and (hit := np.flatnonzero(steps == best[0])).size:
            rows.append((key.removeprefix("val/dice_"), float(values[hit[-1]])))
    return rows, f"metrics.csv, step {best[0]}"


def _draw_per_class(ax: Any, rows: list, source: str) -> None:
    if not rows:
        _empty(ax, "val/per_class_dice_chart", "no per-class Dice logged yet")
        return
    _panel(ax, "val/per_class_dice_chart", f"best step ({source})")
    names = [r[0] for r in rows][::-1]
    values = [r[1] for r in rows][::-1]
    ax.barh(names, values, color=LINE[0], height=0.65)
    ax.set_xlim(0, max(1.0, max(values) * 1.05))
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("Dice", fontsize=8, color=MUTED)


def _overlay_rgb(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, cmap: Any) -> np.ndarray:
    """Grey image with the prediction filled (alpha 0.45) and the ground truth as outlines."""
    rgb = np.repeat((image.astype(float) / 255.0)[..., None], 3, axis=-1)
    colours = np.array([cmap(c % 20)[:3] for c in range(256)])
    fg = pred > 0
    rgb[fg] = 0.55 * rgb[fg] + 0.45 * colours[pred[fg]]
    edge = np.zeros_like(truth, dtype=bool)
    edge[:-1] |= truth[:-1] != truth[1:]
    edge[1:] |= truth[1:] != truth[:-1]
    edge[:, :-1] |= truth[:, :-1] != truth[:, 1:]
    edge[:, 1:] |= truth[:, 1:] != truth[:, :-1]
    edge &= truth > 0
    rgb[edge] = colours[truth[edge]]
    return rgb


def _draw_overlays(fig: Any, spec: Any, run: WandbRun | None) -> None:
    from PIL import Image

    row = run.latest("val/overlays") if run is not None else None
    if row is None:
        _empty(fig.add_subplot(spec), "val/overlays", "no overlays logged (no W&B run?)")
        return
    import matplotlib.pyplot as plt

    media = row["val/overlays"]
    files, masks = media.get("filenames", []), media.get("all_masks", [])
    captions = media.get("captions", [""] * len(files))
    labels = run.config.get("_wandb", {}).get("mask/class_labels", {})
    entry = next(iter(labels.values()), {}) if labels else {}
    names = entry.get("value", entry) if isinstance(entry, dict) else {}
    cmap = plt.get_cmap("tab20")
    n = max(1, len(files))
    sub = spec.subgridspec(1, n, wspace=0.05)
    present: set[int] = set()
    for i, rel in enumerate(files):
        ax = fig.add_subplot(sub[0, i])
        image = np.asarray(Image.open(run.media_path(row, rel)).convert("L"))
        mask = masks[i] if i < len(masks) else {}
        truth = _mask(run, row, mask.get("ground_truth"), image.shape)
        pred = _mask(run, row, mask.get("prediction"), image.shape)
        present |= set(np.unique(truth).tolist()) | set(np.unique(pred).tolist())
        ax.imshow(_overlay_rgb(image, truth, pred, cmap), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(EDGE)
        ax.set_xlabel(captions[i].split(", step")[0], fontsize=7, color=MUTED)
        if i == 0:
            step = row.get("trainer/global_step", "?")
            ax.set_title(
                f"val/overlays (step {step}): prediction filled, ground truth outlined",
                loc="left",
                fontsize=10,
                color=TEXT,
                fontweight="bold",
                pad=8,
            )
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(c % 20)) for c in sorted(present) if c > 0]
    texts = [str(names.get(str(c), c)) for c in sorted(present) if c > 0]
    if handles:
        fig.legend(
            handles,
            texts,
            loc="lower left",
            bbox_to_anchor=(spec.get_position(fig).x0, 0.005),
            ncol=min(7, len(handles)),
            fontsize=7,
            frameon=False,
        )


def _mask(run: WandbRun, row: dict, mask: dict | None, shape: tuple) -> np.ndarray:
    from PIL import Image

    if not mask or "path" not in mask:
        return np.zeros(shape, dtype=np.uint8)
    return np.asarray(Image.open(run.media_path(row, mask["path"])))


def _draw_image_panel(ax: Any, run: WandbRun | None, key: str, note: str) -> None:
    from PIL import Image

    row = run.latest(key) if run is not None else None
    if row is None:
        _empty(ax, key, note)
        return
    _panel(ax, key, f"step {row.get('trainer/global_step', '?')}")
    ax.grid(False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.imshow(np.asarray(Image.open(run.media_path(row, row[key]["filenames"][-1]))))


def _best_summary(run: WandbRun | None) -> str:
    if run is None:
        return "no W&B run found: CSV panels only"
    dice = run.summary.get("val/dice")
    value = dice.get("max") if isinstance(dice, dict) else dice
    parts = [f"group {run.group}", f"tags {', '.join(run.tags)}"]
    if isinstance(value, float | int) and math.isfinite(value):
        parts.append(f"summary val/dice (max) {value:.3f}")
    if "val/best_step" in run.summary:
        parts.append(f"val/best_step {run.summary['val/best_step']}")
    return "   |   ".join(parts)


def render_dashboard(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draws the dashboard of ``run_dir`` into ``out`` (default ``<run_dir>/dashboard.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "dashboard.png"
    csv_path = run_dir / "csv" / "metrics.csv"
    series = read_metrics_csv(csv_path) if csv_path.is_file() else {}
    run = read_wandb_run(run_dir) if wandb_run_dirs(run_dir) else None

    fig = plt.figure(figsize=(16, 10), facecolor=BG)
    grid = fig.add_gridspec(
        2, 6, height_ratios=[1, 1.25], left=0.04, right=0.985, top=0.89, bottom=0.07
    )
    grid.update(wspace=0.55, hspace=0.32)
    title = run.name if run is not None and run.name else run_dir.name
    title = title if len(title) <= 90 else title[:87] + "..."  # multirun names list overrides
    project = run.project if run is not None and run.project else "scdl"
    fig.text(0.04, 0.955, f"{project}  /  {title}", fontsize=15, color=TEXT, fontweight="bold")
    fig.text(0.04, 0.925, _best_summary(run), fontsize=9, color=MUTED)
    offline = run is not None and any(d.name.startswith("offline-") for d in run.dirs)
    mode = "offline run (wandb sync uploads it)" if offline else ""
    fig.text(0.985, 0.955, mode, fontsize=9, color=MUTED, ha="right")

    best = _draw_val_dice(fig.add_subplot(grid[0, 0:2]), series)
    _draw_losses(fig.add_subplot(grid[0, 2:4]), series)
    rows, source = _per_class_rows(run, series, best)
    _draw_per_class(fig.add_subplot(grid[0, 4:6]), rows, source)
    _draw_overlays(fig, grid[1, 0:4], run)
    _draw_image_panel(
        fig.add_subplot(grid[1, 4:6]), run, "scdl/proxies", "no proxy figure (SCDL off?)"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, facecolor=BG)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m scdl.evaluation.dashboard <run dir> [-o out.png]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a training run folder (holds csv/ and wandb/)")
    parser.add_argument("-o", "--out", type=Path, default=None, help="PNG (<run>/dashboard.png)")
    args = parser.parse_args(argv)
    print(render_dashboard(args.run_dir, args.out))


if __name__ == "__main__":
    main()
