"""Results as data: the per-case test results of the runs a table reports, committed under
``results/`` and turned into that table by one command.

A run folder (``logs/...``) holds checkpoints and logs and stays on the machine that trained it;
the archive keeps what a table needs from it, small enough for git: one ``<name>.run.json`` per
run with the summary record (experiment, ablation, seed, data set, the smallest classes, best
validation Dice, the per-case per-class test Dice), the pairing hashes (split and data), the
run's command-line overrides, a hash of its resolved config (machine paths left out) and its
``provenance.json`` (commit, machine kind, precision). A study folder also holds ``tables.yaml``:
the tables regenerated from the folder alone.

::

    python -m scdl.reporting.archive export results/<study> <run or sweep folders...>
    python -m scdl.reporting.archive tables results/<study>          # rewrite its tables
    python -m scdl.reporting.archive tables results --check          # exit 1 where one differs

``tables`` on a folder that holds studies (``results/``) also writes its ``runs.md``: every
study's runs per arm, with seeds, machines and commits, read off the records (never by hand).

``tables.yaml``::

    tables:
      - file: summary.md            # written into the study folder
        args: [--per-class]         # arguments of python -m scdl.reporting.summary (roots: the folder)
      - file: prior.md
        tool: prior_diagnostics     # python -m scdl.reporting.prior_diagnostics --table <files>
        args: [diagnostics/full_seed1.json]   # relative to the study folder
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from scdl.reporting.records import ARCHIVE_VERSION, SUFFIX, collect, load_records

TABLES = "tables.yaml"
INDEX = "runs.md"  # the run index of a folder of studies
# Config sections that differ between machines without changing the run (where files live, how
# Hydra logs): left out of the config hash.
MACHINE_KEYS = ("paths", "hydra", "run_dir", "ckpt_path")


def config_hash(cfg: dict) -> str:
    """sha256 (16 hex) of a resolved config without the machine-specific sections."""
    kept = {k: v for k, v in cfg.items() if k not in MACHINE_KEYS}
    if isinstance(kept.get("data"), dict):  # data paths: where the cache is, not what is in it
        kept["data"] = {
            k: v for k, v in kept["data"].items() if k not in ("root", "cache_dir", "raw_dir")
        }
        if isinstance(kept["data"].get("module"), dict):
            kept["data"]["module"] = {
                k: v for k, v in kept["data"]["module"].items() if k != "cache_dir"
            }
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def archive_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The archived form of a :func:`scdl.reporting.summary.collect` record."""
    from scdl.runs import load_config, resolved_container
    from scdl.utils.provenance import read_provenance

    run = Path(record["run"])
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else None
    resolved = resolved_container(load_config(run))
    kept = {k: v for k, v in record.items() if k != "run"}
    if kept.get("result", {}).get("ckpt"):  # the checkpoint's name, not this machine's path
        kept["result"] = {**kept["result"], "ckpt": Path(kept["result"]["ckpt"]).name}
    return {
        "archive_version": ARCHIVE_VERSION,
        "name": run.name,
        **kept,
        "overrides": overrides,
        "config_sha256": config_hash(resolved),
        "provenance": read_provenance(run),
    }


def record_file_name(record: Mapping[str, Any]) -> str:
    parts = (record["data"], record["experiment"], record["ablation"], f"seed{record['seed']}")
    return "__".join(str(p).replace("/", "-") for p in parts) + SUFFIX


def export(study: Path, roots: Sequence[Path], k: int = 4) -> list[Path]:
    """Writes one ``.run.json`` per finished run below ``roots`` into ``study`` (an existing file
    of the same data set, experiment, ablation and seed is replaced). Returns the files."""
    records = collect(list(roots), k)
    if not records:
        raise SystemExit(f"no finished runs below {', '.join(map(str, roots))}")
    study.mkdir(parents=True, exist_ok=True)
    written = []
    for record in records:
        path = study / record_file_name(record)
        path.write_text(json.dumps(archive_record(record), indent=1) + "\n")  # class order kept
        written.append(path)
    return written


def table_specs(study: Path) -> list[dict]:
    path = study / TABLES
    spec = yaml.safe_load(path.read_text()) or {}
    tables = spec.get("tables")
    if not isinstance(tables, list) or not all(isinstance(t, dict) and "file" in t for t in tables):
        raise SystemExit(f"{path}: expected 'tables:' as a list of {{file, args}} entries")
    return tables


def render_table(study: Path, spec: dict) -> str:
    """One table of ``study`` regenerated from the folder alone: ``tool: summary`` (default) over
    the folder's records, or ``tool: prior_diagnostics`` over the JSON files named in ``args``."""
    tool = spec.get("tool", "summary")
    args = [str(a) for a in spec.get("args", [])]
    if tool == "summary":
        from scdl.reporting.summary import parse_args, render

        return render(parse_args([str(study), *args])) + "\n"
    if tool == "prior_diagnostics":
        from scdl.reporting.prior_diagnostics import markdown

        files = [study / a for a in args]
        return markdown({p.stem: json.loads(p.read_text()) for p in files}) + "\n"
    raise SystemExit(f"{study / TABLES}: unknown tool {tool!r} (summary or prior_diagnostics)")


def studies(root: Path) -> list[Path]:
    """Every study folder (one with a ``tables.yaml``) at or below ``root``."""
    return sorted(p.parent for p in Path(root).rglob(TABLES))


def machine_label(start: dict[str, Any]) -> str:
    """``CPU model (capability[, bf16 flags])`` of one provenance start; the flags only where
    recorded (records written before them name the model and capability alone)."""
    details = [str(start.get("cpu_capability")), *(start.get("bf16_flags") or [])]
    return f"{start.get('cpu')} ({', '.join(details)})"


def render_index(root: Path) -> str:
    """The run index of the studies below ``root``: one row per study, data set and arm with its
    seeds, run count, the machines (:func:`machine_label`) and commits that trained it, and
    the dates of its first and last start. Runs without a provenance record are counted."""
    from scdl.reporting.summary import seed_ranges  # as render_table: summary only when asked

    lines = [
        f"<!-- written by python -m scdl.reporting.archive tables {root.name}; never by hand -->",
        "",
        "| study | data | arm | seeds | runs | machines | commits | trained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for study in studies(root):
        arms: dict[tuple[str, str], list[dict]] = {}
        for record in load_records([study]):
            key = (str(record["data"]), f"{record['experiment']}/{record['ablation']}")
            arms.setdefault(key, []).append(dict(record))
        for (data, arm), records in sorted(arms.items()):
            starts = [s for r in records for s in r.get("provenance") or []]
            unrecorded = sum(not r.get("provenance") for r in records)
            machines = sorted({machine_label(s) for s in starts})
            commits = sorted({str(s.get("commit"))[:7] for s in starts})
            if unrecorded:
                machines.append(f"{unrecorded} without a provenance record")
            dates = sorted(str(s["started"])[:10] for s in starts if s.get("started"))
            trained = "" if not dates else " to ".join(sorted({dates[0], dates[-1]}))
            lines.append(
                f"| `{study.relative_to(root)}` | {data} | {arm} "
                f"| {seed_ranges([int(r['seed']) for r in records])} | {len(records)} "
                f"| {', '.join(machines)} | {', '.join(commits)} | {trained} |"
            )
    return "\n".join(lines) + "\n"


def regenerate(root: Path, check: bool = False) -> list[str]:
    """Rewrites (or with ``check`` compares) every table of every study below ``root``, and the
    run index of a folder that holds studies; returns the files that differed from the
    committed ones."""
    root = Path(root)
    found = studies(root)
    outputs: list[tuple[Path, Callable[[], str]]] = [
        (study / spec["file"], partial(render_table, study, spec))
        for study in found
        for spec in table_specs(study)
    ]
    if found and not (root / TABLES).is_file():
        outputs.append((root / INDEX, partial(render_index, root)))
    differ = []
    for target, render in outputs:
        text = render()
        if not target.is_file() or target.read_text() != text:
            differ.append(str(target))
            if not check:
                target.write_text(text)
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="archive finished runs into a study folder")
    ex.add_argument("study", type=Path)
    ex.add_argument("roots", nargs="+", type=Path)
    ex.add_argument("--smallest", type=int, default=4)
    tb = sub.add_parser("tables", help="regenerate the tables of the studies below a folder")
    tb.add_argument("root", type=Path, nargs="?", default=Path("results"))
    tb.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args(argv)
    if args.command == "export":
        for path in export(args.study, args.roots, args.smallest):
            print(path)
        return 0
    differ = regenerate(args.root, check=args.check)
    for table in differ:
        print(f"{'differs' if args.check else 'rewritten'}: {table}")
    if args.check and differ:
        print(
            "the committed tables differ from their data: rerun "
            f"python -m scdl.reporting.archive tables {args.root}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
