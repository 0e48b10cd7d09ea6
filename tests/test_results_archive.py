"""Results as data: every table committed under results/ regenerates from its per-case records,
and archiving runs keeps what the summary tables need."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from scdl.metrics.results import aggregate_metrics, save_metrics
from scdl.reporting.archive import export, main, regenerate, studies
from scdl.reporting.records import load_records
from scdl.reporting.summary import parse_args, parse_seeds, render, seed_ranges
from scdl.runs import TRAIN_TEST_STEM

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_every_committed_table_regenerates_from_its_data():
    """The tables docs/ quote are files under results/<study>/, written by one command from the
    study's .run.json records; a table edited by hand, or records changed without rerunning the
    command, fail here."""
    assert studies(RESULTS), "results/ holds no study (tables.yaml)"
    assert regenerate(RESULTS, check=True) == []


def _run(
    root: Path, name: str, ablation: str, seed: int, gain: float, cache: Path, **machine: object
) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        {
            "experiment_name": "exp",
            "ablation_name": ablation,
            "seed": seed,
            "paths": {"output_dir": str(run)},
            "data": {"name": "phantom", "cache_dir": str(cache), "protocol": {"name": "p"}},
        },
        run / ".hydra" / "config.yaml",
    )
    (run / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n- ablation={ablation}\n")
    (run / "split.json").write_text(
        json.dumps({"labeled": ["a"], "unlabeled": [], "val": [], "test": ["t0", "t1"]})
    )
    rng = np.random.default_rng(seed)
    base = np.array([0.8, 0.1, 0.4]) + gain
    cases = [{"dice": np.clip(base + rng.normal(0, 0.05, 3), 0, 1)} for _ in range(6)]
    res = aggregate_metrics(cases, ["big", "tiny", "mid"], [f"t{i}" for i in range(6)])
    save_metrics(res, run, stem=TRAIN_TEST_STEM)
    (run / "finished.json").write_text(json.dumps({"metrics": {"best/val/dice": 0.5}}))
    (run / "provenance.json").write_text(json.dumps({"starts": [{"commit": "c" * 40, **machine}]}))
    return run


def test_archived_runs_give_the_same_tables_as_their_run_folders(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / "a_label.npy", np.array([1] * 50 + [2] * 2 + [3] * 10, dtype=np.uint8))
    runs = tmp_path / "logs"
    for seed in (1, 2, 3):
        _run(runs, f"b{seed}", "baseline", seed, 0.0, cache)
        _run(runs, f"f{seed}", "full", seed, 0.05, cache)
    study = tmp_path / "results" / "study"
    files = export(study, [runs], k=1)
    assert len(files) == 6
    record = json.loads(files[0].read_text())
    assert record["overrides"] == ["seed=1", "ablation=baseline"]
    assert record["provenance"] == [{"commit": "c" * 40}] and len(record["config_sha256"]) == 16
    assert list(record["per_class"]) == ["big", "tiny", "mid"]  # class order kept
    assert str(tmp_path) not in files[0].read_text().replace(str(cache), "")  # no run paths

    from_runs = render(parse_args([str(runs), "--per-class", "--smallest", "1"]))
    cache.rename(tmp_path / "gone")  # the archive needs neither the runs nor the data
    (runs).rename(tmp_path / "gone_logs")
    from_archive = render(parse_args([str(study), "--per-class", "--smallest", "1"]))
    assert from_archive == from_runs
    assert len(load_records([study])) == 6

    (study / "tables.yaml").write_text("tables:\n  - file: t.md\n    args: [--per-class]\n")
    assert main(["tables", str(tmp_path / "results"), "--check"]) == 1  # not written yet
    assert main(["tables", str(tmp_path / "results")]) == 0
    assert main(["tables", str(tmp_path / "results"), "--check"]) == 0
    table = study / "t.md"
    table.write_text(table.read_text().replace("| exp | full |", "| exp | full (edited) |"))
    assert main(["tables", str(tmp_path / "results"), "--check"]) == 1


def test_an_archive_of_another_version_is_refused_by_name(tmp_path):
    bad = tmp_path / "x.run.json"
    bad.write_text(json.dumps({"archive_version": 99}))
    with pytest.raises(SystemExit, match="x.run.json: archive version 99"):
        load_records([tmp_path])


def test_seed_ranges_compress_runs_of_consecutive_seeds_as_parse_seeds_reads_them():
    assert seed_ranges([3, 1, 2, 5, 8, 7, 2]) == "1-3,5,7-8"
    assert seed_ranges([4]) == "4"
    assert parse_seeds(seed_ranges([3, 1, 2, 5, 8, 7, 2])) == {1, 2, 3, 5, 7, 8}


def test_the_run_index_is_read_off_the_records_and_goes_stale_when_a_run_is_added(tmp_path):
    """results/runs.md counts each study's runs per arm from its .run.json files: exporting one
    more run without rewriting the index fails the check (a hand-kept count went stale once)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / "a_label.npy", np.array([1] * 50 + [2] * 2 + [3] * 10, dtype=np.uint8))
    runs = tmp_path / "logs"
    xeon = {"cpu": "Xeon", "cpu_capability": "AVX512", "bf16_flags": ["amx_bf16", "avx512_bf16"]}
    for seed in (1, 2):
        _run(runs, f"b{seed}", "baseline", seed, 0.0, cache, **xeon)
    _run(runs, "f1", "full", 1, 0.05, cache, cpu="EPYC", cpu_capability="AVX512")
    results = tmp_path / "results"
    study = results / "study"
    export(study, [runs], k=1)
    (study / "tables.yaml").write_text("tables:\n  - file: t.md\n    args: [--per-class]\n")
    assert main(["tables", str(results)]) == 0
    index = (results / "runs.md").read_text()
    assert "| `study` | phantom | exp/baseline | 1-2 | 2 |" in index
    assert "| `study` | phantom | exp/full | 1 | 1 |" in index
    assert "c" * 7 in index  # the commit of its provenance
    assert "| Xeon (AVX512, amx_bf16, avx512_bf16) |" in index  # AMX told apart
    assert "| EPYC (AVX512) |" in index  # a record from before the flags were kept

    _run(runs, "f3", "full", 3, 0.05, cache)
    export(study, [runs / "f3"], k=1)
    assert regenerate(results, check=True) == [str(study / "t.md"), str(results / "runs.md")]
    assert main(["tables", str(study)]) == 0  # a study alone: its tables, no index of its own
    assert not (study / "runs.md").exists()
    assert regenerate(results, check=True) == [str(results / "runs.md")]
    regenerate(results)
    assert "| `study` | phantom | exp/full | 1,3 | 2 |" in (results / "runs.md").read_text()
