"""Result tables: per-class Dice as text (rich) and as CSV / JSON files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path


def dice_table(results: dict, title: str = "test Dice") -> str:
    """Renders ``{"class_names", "mean", "std", "mean_dice"}`` as a text table (Dice in %)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("class")
    table.add_column("Dice % (mean ± std over cases)", justify="right")
    for name, m, s in zip(results["class_names"], results["mean"], results["std"], strict=True):
        table.add_row(name, f"{100 * m:5.1f} ± {100 * s:4.1f}")
    table.add_row("[bold]mean[/bold]", f"[bold]{100 * results['mean_dice']:5.1f}[/bold]")
    buf = io.StringIO()
    Console(file=buf, width=100, force_terminal=False).print(table)
    return buf.getvalue()


def write_test_results(results: dict, out_dir: str | Path, stem: str = "test_dice") -> None:
    """Writes ``<stem>.json`` (everything) and ``<stem>.csv`` (one row per class) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "dice_mean", "dice_std"])
        for name, m, s in zip(results["class_names"], results["mean"], results["std"], strict=True):
            writer.writerow([name, f"{m:.4f}", f"{s:.4f}"])
        writer.writerow(["mean", f"{results['mean_dice']:.4f}", ""])
