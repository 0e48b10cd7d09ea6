"""A screenshot-like picture of a training run's W&B panels, drawn with matplotlib from the run
folder's plain files (no W&B file is read, so it works on offline runs never synced and on runs
trained without W&B).

``python -m scdl.reporting.dashboard <run dir> [-o docs/dashboard.png]``

- ``<run>/csv/metrics.csv`` (the CSV logger, always on): the ``val/dice`` curve (best point
  marked), the training losses (``train/loss*``) and the per-class validation Dice at the best
  step;
- ``<run>/figures/overlays_step<N>.npz`` (written with the W&B overlays, :mod:`scdl.runs`): the
  latest segmentation overlays (image, ground truth outlined, prediction filled);
- ``<run>/figures/proxies_step<N>.png``: the latest SCDL proxy figure;
- ``<run>/.hydra/config.yaml``: the run's name, group (its sweep) and tags as W&B names them.

A panel whose data is missing (no SCDL, no validation yet, no W&B overlays) is drawn empty with a
note.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from scdl.runs import latest_figure, load_config, load_overlays, metric_series


def dashboard_sources(run_dir: str | Path) -> dict[str, str | None]:
    """Which file each panel is drawn from (None: drawn empty)."""
    run_dir = Path(run_dir)
    series = metric_series(run_dir)
    overlays, proxies = (
        latest_figure(run_dir, "overlays_step*.npz"),
        latest_figure(run_dir, "proxies_step*.png"),
    )
    csv = "csv/metrics.csv"
    return {
        "val/dice": csv if "val/dice" in series else None,
        "train losses": csv if any(k.startswith("train/loss") for k in series) else None,
        "per-class Dice": csv if any(k.startswith("val/dice_") for k in series) else None,
        "overlays": str(overlays[0].relative_to(run_dir)) if overlays else None,
        "proxies": str(proxies[0].relative_to(run_dir)) if proxies else None,
    }


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


def _per_class_rows(series: dict, best: tuple[int, float] | None, classes: list[str] | None):
    """(class, dice) rows at the best validation step, from the CSV log."""
    if best is None:
        return [], ""
    rows = []
    for key, (steps, values) in sorted(series.items()):
        name = key.removeprefix("val/dice_")
        if not key.startswith("val/dice_") or name not in (classes or [name]):
            continue
        if classes is None and name == "minority":  # val/dice_minority: not a class
            continue
        if (hit := np.flatnonzero(steps == best[0])).size:
            rows.append((name, float(values[hit[-1]])))
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


def _draw_overlays(fig: Any, spec: Any, found: tuple[Path, int] | None) -> None:
    if found is None:
        _empty(fig.add_subplot(spec), "val/overlays", "no overlays (they are drawn with W&B on)")
        return
    import matplotlib.pyplot as plt

    planes, names = load_overlays(found[0])
    cmap = plt.get_cmap("tab20")
    sub = spec.subgridspec(1, max(1, len(planes)), wspace=0.05)
    present: set[int] = set()
    for i, (image, truth, pred, caption) in enumerate(planes):
        ax = fig.add_subplot(sub[0, i])
        present |= set(np.unique(truth).tolist()) | set(np.unique(pred).tolist())
        ax.imshow(_overlay_rgb(image, truth, pred, cmap), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(EDGE)
        ax.set_xlabel(caption, fontsize=7, color=MUTED)
        if i == 0:
            ax.set_title(
                f"val/overlays (step {found[1]}): prediction filled, ground truth outlined",
                loc="left",
                fontsize=10,
                color=TEXT,
                fontweight="bold",
                pad=8,
            )
    shown = [c for c in sorted(present) if c > 0]
    if shown:
        fig.legend(
            [plt.Rectangle((0, 0), 1, 1, color=cmap(c % 20)) for c in shown],
            [names[c] if c < len(names) else str(c) for c in shown],
            loc="lower left",
            bbox_to_anchor=(spec.get_position(fig).x0, 0.005),
            ncol=min(7, len(shown)),
            fontsize=7,
            frameon=False,
        )


def _draw_image_panel(ax: Any, found: tuple[Path, int] | None, key: str, note: str) -> None:
    from PIL import Image

    if found is None:
        _empty(ax, key, note)
        return
    _panel(ax, key, f"step {found[1]}")
    ax.grid(False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.imshow(np.asarray(Image.open(found[0])))


def _header(cfg: Any, run_dir: Path, best: tuple[int, float] | None) -> tuple[str, str, str]:
    """(title, summary line, W&B note) as the W&B run names them."""
    experiment = str(cfg.get("experiment_name", run_dir.name)) if cfg is not None else run_dir.name
    ablation = str(cfg.get("ablation_name", "none")) if cfg is not None else "none"
    title = f"{experiment}/{ablation}/{run_dir.name}"
    multirun = cfg is not None and "multiruns" in run_dir.parts
    group = str(cfg.get("sweep_name")) if multirun else experiment
    tags = [str(t) for t in (cfg.get("tags") or [])] if cfg is not None else []
    parts = [f"group {group}"] + ([f"tags {', '.join(tags)}"] if tags else [])
    if best is not None and math.isfinite(best[1]):
        parts.append(f"best val/dice {best[1]:.3f} at step {best[0]}")
    offline = any(d.is_dir() for d in (run_dir / "wandb").glob("offline-run-*"))
    note = "offline W&B run beside it (wandb sync uploads it)" if offline else ""
    return title, "   |   ".join(parts), note


def render_dashboard(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draws the dashboard of ``run_dir`` into ``out`` (default ``<run_dir>/dashboard.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "dashboard.png"
    series = metric_series(run_dir)
    cfg = load_config(run_dir)
    names = cfg.data.get("class_names") if cfg is not None and "data" in cfg else None
    classes = list(names)[1:] if names else None  # null in a config: the cache index names them

    fig = plt.figure(figsize=(16, 10), facecolor=BG)
    grid = fig.add_gridspec(
        2, 6, height_ratios=[1, 1.25], left=0.04, right=0.985, top=0.89, bottom=0.07
    )
    grid.update(wspace=0.55, hspace=0.32)
    best = _draw_val_dice(fig.add_subplot(grid[0, 0:2]), series)
    title, summary, note = _header(cfg, run_dir, best)
    title = title if len(title) <= 90 else title[:87] + "..."
    fig.text(0.04, 0.955, f"scdl  /  {title}", fontsize=15, color=TEXT, fontweight="bold")
    fig.text(0.04, 0.925, summary, fontsize=9, color=MUTED)
    fig.text(0.985, 0.955, note, fontsize=9, color=MUTED, ha="right")
    _draw_losses(fig.add_subplot(grid[0, 2:4]), series)
    rows, source = _per_class_rows(series, best, classes)
    _draw_per_class(fig.add_subplot(grid[0, 4:6]), rows, source)
    _draw_overlays(fig, grid[1, 0:4], latest_figure(run_dir, "overlays_step*.npz"))
    _draw_image_panel(
        fig.add_subplot(grid[1, 4:6]),
        latest_figure(run_dir, "proxies_step*.png"),
        "scdl/proxies",
        "no proxy figure (SCDL off?)",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, facecolor=BG)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m scdl.reporting.dashboard <run dir> [-o out.png]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a training run folder (holds csv/, figures/)")
    parser.add_argument("-o", "--out", type=Path, default=None, help="PNG (<run>/dashboard.png)")
    args = parser.parse_args(argv)
    print(render_dashboard(args.run_dir, args.out))


if __name__ == "__main__":
    main()
