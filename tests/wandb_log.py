"""A reader of W&B's offline transaction log (``<run>/wandb/*run-*/run-*.wandb``), for the tests
that check what a training run logged to W&B (names, tags, summaries, media). Test-only: it
uses W&B's private protobuf module, so a W&B upgrade may need it updated; the package itself
reads no W&B file (the run dashboard draws from plain files).

The file is a LevelDB-style log (what ``wandb sync`` reads): a 7-byte header, then 32 KiB blocks of
chunks, each with a 7-byte header (CRC, length, type: full / first / middle / last piece of a
record)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


BLOCK = 32768  # LevelDB log block size of the .wandb file


HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte)


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
