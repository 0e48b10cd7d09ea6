import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from scdl.metrics.results import aggregate_metrics, save_metrics
from scdl.reporting.paper_table import per_run_markdown
from scdl.reporting.records import collect
from scdl.reporting.summary import markdown_table
from scdl.runs import TRAIN_TEST_STEM


def _run(root, name, ablation, seed, means, cache, legacy=False, data="phantom", cases=1):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        {
            "experiment_name": "exp",
            "ablation_name": ablation,
            "seed": seed,
            "paths": {"output_dir": "x"},
            "data": {"name": data, "cache_dir": str(cache)},
        },
        run / ".hydra" / "config.yaml",
    )
    (run / "split.json").write_text(
        json.dumps({"labeled": ["a"], "unlabeled": [], "val": [], "test": []})
    )
    if legacy:  # the pre-schema file of older run folders
        (run / "test_dice.json").write_text(
            json.dumps({"class_names": ["big", "tiny", "mid"], "mean": means, "std": [0, 0, 0]})
        )
    else:  # the training test's file in the one results schema
        results = aggregate_metrics(
            [{"dice": np.asarray(means) + 0.01 * i} for i in range(cases)],
            ["big", "tiny", "mid"],
            [f"t{i}" for i in range(cases)],
            protocol="train_test",
        )
        save_metrics(results, run, stem=TRAIN_TEST_STEM)


def test_summary_groups_seeds_and_finds_the_smallest_classes(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    # voxels: big 50, tiny 2, mid 10 (+ background)
    label = np.array([1] * 50 + [2] * 2 + [3] * 10 + [0] * 8, dtype=np.uint8)
    np.save(cache / "a_label.npy", label)
    _run(tmp_path, "r1", "full", 1, [0.9, 0.2, 0.5], cache)
    _run(tmp_path, "r2", "full", 2, [0.7, 0.4, 0.4], cache)
    _run(tmp_path, "r3", "baseline", 1, [0.9, 0.0, 0.3], cache, legacy=True)
    for name, val in (("r1", 0.6), ("r2", 0.4)):  # finished runs record their best validation
        (tmp_path / name / "finished.json").write_text(
            json.dumps({"metrics": {"best/val/dice": val}})
        )
    records = collect([tmp_path], k=1)
    assert len(records) == 3
    assert {r["small_classes"][0] for r in records} == {"tiny"}
    table = markdown_table(records)
    # sample std (ddof=1): 2 seeds 53.3 and 50.0 -> 2.4, not the population formula's 1.7
    assert "| exp | full | 1,2 | 50.0 ± 14.1 | 51.7 ± 2.4 | 30.0 ± 14.1 |" in table
    assert "sample standard deviation (ddof=1)" in table
    assert "| exp | baseline | 1 | – | 40.0 | 0.0 |" in table


def test_paper_table_reads_eval_outputs(tmp_path):
    run = tmp_path / "multirun" / "0_full_seed1"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        {"experiment_name": "exp", "ablation_name": "full", "seed": 1},
        run / ".hydra" / "config.yaml",
    )
    out = run / "eval" / "test_paper"
    out.mkdir(parents=True)
    per_class = {
        "spleen": {"dice": {"mean": 0.5}},
        "right_adrenal_gland": {"dice": {"mean": 0.125}},
    }
    overall = {"dice": {"mean": 0.3125, "std": 0.01}, "asd": {"mean": 12.25, "std": 3.0}}
    (out / "metrics.json").write_text(
        json.dumps({"classes": list(per_class), "per_class": per_class, "overall": overall})
    )
    table = per_run_markdown([tmp_path])
    assert (
        table.splitlines()[0]
        == "| experiment | ablation | seed | Avg Dice % | Avg ASD (vox) | Sp | RAG |"
    )
    assert "| exp | full | 1 | 31.2 ± 1.0 | 12.2 ± 3.0 | 50.0 | 12.5 |" in table


def test_comparison_table_pairs_each_group_with_the_baseline(tmp_path):
    from scdl.reporting.summary import comparison_table

    def record(ablation, seed, shift):
        cases = [{"dice": np.array([0.8, 0.1 * i]) + shift} for i in range(1, 7)]
        res = aggregate_metrics(cases, ["big", "tiny"], [f"c{i}" for i in range(6)])
        return {
            "experiment": "exp",
            "ablation": ablation,
            "seed": seed,
            "dice": 0.0,
            "small_dice": 0.0,
            "small_classes": ["tiny"],
            "per_class": {},
            "result": res,
        }

    records = [record("baseline", s, 0.0) for s in (1, 2, 3)] + [
        record("full", s, 0.1) for s in (1, 2, 3)
    ]
    table = comparison_table(records, n_boot=500)
    assert "vs exp/baseline" in table
    # +0.1 Dice on every class of every case: +10 points, zero-width intervals; claimed on the
    # primary endpoint (mean Dice, Holm over a family of 1), the minority column descriptive
    primary, secondary = "+10.0 [+10.0, +10.0] * | <0.001", "+10.0 [+10.0, +10.0] | <0.001"
    assert f"| exp/full | 1,2,3 | 6 | {primary} | {secondary} | 2 / 2 |" in table
    assert "Holm-adjusted over its 1 comparisons with an interval" in table
    # two seeds: the difference, and why there is no interval
    two = comparison_table([r for r in records if r["seed"] != 3], n_boot=200)
    assert "| exp/full | 1,2 | 6 | +10.0 (no interval: 2 seeds (an interval needs 3)) | – |" in two
    # the same comparisons as data, and their forest plot (summary --plot)
    from scdl.reporting.paper_table import plot_paired
    from scdl.reporting.summary import paired_vs_baseline, per_class_paired_table

    # per class: which classes carry the difference (summary --per-class)
    for r in records:
        r["per_class"] = {"big": 0.0, "tiny": 0.0}
    per_class = per_class_paired_table(records, n_boot=200).splitlines()
    assert per_class[2:] == [
        "| class | exp/full |",
        "|---|---|",
        "| big | +10.0 [+10.0, +10.0] |",
        "| tiny | +10.0 [+10.0, +10.0] |",
    ]
    base, pairs = paired_vs_baseline(records, n_boot=200)
    assert base == "exp/baseline" and [c["method"] for c in pairs] == ["exp/full"]
    assert pairs[0]["mean"]["diff"] == pytest.approx(0.1)
    assert plot_paired({"paired": pairs}, tmp_path / "forest.png").stat().st_size > 1000


def _label_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / "a_label.npy", np.array([1] * 50 + [2] * 2 + [3] * 10, dtype=np.uint8))
    return cache


def test_runs_of_two_data_sets_are_grouped_and_paired_within_their_data_set(tmp_path):
    """The held-out phantom runs the phantom's experiment: its seed 1 must not join (or pair with)
    the phantom's seed 1."""
    from scdl.reporting.summary import comparison_table, paired_vs_baseline

    cache = _label_cache(tmp_path)
    for data, gain in (("phantom", 0.1), ("heldout", -0.2)):
        for seed in (1, 2):
            base = [0.5, 0.1 * seed, 0.3]
            _run(tmp_path, f"{data}_b{seed}", "baseline", seed, base, cache, data=data, cases=3)
            full = [v + gain for v in base]
            _run(tmp_path, f"{data}_f{seed}", "full", seed, full, cache, data=data, cases=3)
    records = collect([tmp_path], k=1)
    table = markdown_table(records)
    assert table.splitlines()[0].startswith("| data | experiment | ablation | seeds |")
    assert (
        "| heldout | exp | baseline | 1,2 |" in table and "| phantom | exp | full | 1,2 |" in table
    )
    _, pairs = paired_vs_baseline(records, n_boot=200)
    diffs = {c["method"]: c["mean"]["diff"] for c in pairs}
    assert diffs == {
        "exp/full on heldout": pytest.approx(-0.2),
        "exp/full on phantom": pytest.approx(0.1),
    }
    assert "vs exp/baseline within each data set" in comparison_table(records, n_boot=200)


def test_two_runs_of_one_seed_in_a_group_stop_the_summary_naming_both(tmp_path):
    from scdl.reporting.summary import main

    cache = _label_cache(tmp_path)
    _run(tmp_path / "sweep1", "r1", "full", 1, [0.9, 0.2, 0.5], cache)
    _run(tmp_path / "sweep2", "r1", "full", 1, [0.7, 0.4, 0.4], cache)
    with pytest.raises(SystemExit, match="exp/full on phantom: seed 1 has 2 runs") as err:
        main([str(tmp_path / "sweep1"), str(tmp_path / "sweep2")])
    assert "sweep1/r1" in str(err.value) and "sweep2/r1" in str(err.value)


def test_forest_plot_axis_names_the_baseline_it_was_compared_with(tmp_path, monkeypatch):
    """summary --plot --baseline exp/full plots baseline - full and plus - full: an axis reading
    "with SCDL - without" would state the wrong comparison."""
    from matplotlib.axes import Axes

    from scdl.reporting.summary import main

    cache = _label_cache(tmp_path)
    for seed in (1, 2):
        for ablation, gain in (("baseline", 0.0), ("full", 0.1), ("plus", 0.2)):
            means = [0.5 + gain, 0.1 * seed, 0.3]
            _run(tmp_path, f"{ablation}{seed}", ablation, seed, means, cache, cases=3)
    labels: list[str] = []
    set_xlabel = Axes.set_xlabel
    monkeypatch.setattr(
        Axes, "set_xlabel", lambda ax, s, **kw: labels.append(s) or set_xlabel(ax, s, **kw)
    )
    main([str(tmp_path), "--baseline", "exp/full", "--plot", str(tmp_path / "f.png")])
    assert labels == ["Dice points (row - exp/full)"] * 2
    assert (tmp_path / "f.png").stat().st_size > 1000
    # with the per-class tables too (--per-class rebound the comparisons --plot draws to text)
    main(
        [str(tmp_path), "--baseline", "exp/full", "--per-class", "--plot", str(tmp_path / "g.png")]
    )
    assert (tmp_path / "g.png").stat().st_size > 1000


def test_seeds_option_reports_every_arm_on_the_same_seeds(tmp_path, capsys):
    """An arm run with seeds 1-3 beside one with 1-2: --seeds 1,2 gives both arms seeds 1,2."""
    from scdl.reporting.summary import main, parse_seeds

    assert parse_seeds("1-3,7") == {1, 2, 3, 7} and parse_seeds("2") == {2}
    with pytest.raises(ValueError, match="'x' is not a seed"):
        parse_seeds("1,x")
    cache = _label_cache(tmp_path)
    for ablation, seeds in (("full", (1, 2, 3)), ("plus", (1, 2))):
        for seed in seeds:
            means = [0.1 * seed, 0.2, 0.3]
            _run(tmp_path, f"{ablation}{seed}", ablation, seed, means, cache, cases=3)
    main([str(tmp_path), "--seeds", "1-2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| exp |")]
    assert [row.split(" | ")[1:3] for row in rows] == [["full", "1,2"], ["plus", "1,2"]]
    with pytest.raises(SystemExit, match=r"no finished run of seeds \[9\] \(found: 1,2,3\)"):
        main([str(tmp_path), "--seeds", "9"])


def test_arms_run_on_another_split_are_not_paired_and_the_table_says_why(tmp_path):
    """Same seeds, same case ids, but one arm's split.json differs (another unlabeled scan): the
    pair is refused by name, not computed."""
    from scdl.reporting.summary import comparison_table

    cache = _label_cache(tmp_path)
    for seed in (1, 2, 3):
        _run(tmp_path, f"b{seed}", "baseline", seed, [0.5, 0.1, 0.3], cache, cases=5)
        _run(tmp_path, f"f{seed}", "full", seed, [0.6, 0.1, 0.3], cache, cases=5)
    records = collect([tmp_path], k=1)
    assert "[+" in comparison_table(records, n_boot=200)  # paired: an interval
    other = json.loads((tmp_path / "f2" / "split.json").read_text())
    other["unlabeled"] = ["z"]
    (tmp_path / "f2" / "split.json").write_text(json.dumps(other))
    table = comparison_table(collect([tmp_path], k=1), n_boot=200)
    assert "| exp/full | – | – | not paired: " in table
    assert "f2 and " in table and "used another split (split.json)" in table


def test_arms_option_keeps_a_declared_family_and_holm_counts_only_it(tmp_path, capsys):
    """Three arms; --arms with two of them: the third is in no table and Holm adjusts over the
    one comparison left (its p equals the raw p of the same pair compared alone)."""
    from scdl.reporting.summary import main

    cache = _label_cache(tmp_path)
    for ablation, shift in (("baseline", 0.0), ("full", -0.2), ("plus", 0.1)):
        for seed in (1, 2, 3):
            means = [0.5 + shift + 0.01 * seed, 0.4 + shift, 0.6 + shift - 0.01 * seed]
            _run(tmp_path, f"{ablation}{seed}", ablation, seed, means, cache, cases=5)
    main([str(tmp_path), "--baseline", "exp/full", "--arms", "exp/full,exp/plus"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| exp |")]
    assert [row.split(" | ")[1] for row in rows] == ["full", "plus"]
    assert "baseline" not in out and "over its 1 comparison" in out
    with pytest.raises(
        SystemExit, match=r"no finished run of \['exp/none'\] \(found: exp/baseline"
    ):
        main([str(tmp_path), "--arms", "exp/full,exp/none"])
