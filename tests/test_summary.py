import json

import numpy as np
from omegaconf import OmegaConf

from scdl.evaluation.summary import collect, markdown_table


def _run(root, name, ablation, seed, means, cache):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        {
            "experiment_name": "exp",
            "ablation_name": ablation,
            "seed": seed,
            "paths": {"output_dir": "x"},
            "data": {"cache_dir": str(cache)},
        },
        run / ".hydra" / "config.yaml",
    )
    (run / "split.json").write_text(
        json.dumps({"labeled": ["a"], "unlabeled": [], "val": [], "test": []})
    )
    (run / "test_dice.json").write_text(
        json.dumps({"class_names": ["big", "tiny", "mid"], "mean": means, "std": [0, 0, 0]})
    )


def test_summary_groups_seeds_and_finds_the_smallest_classes(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    # voxels: big 50, tiny 2, mid 10 (+ background)
    label = np.array([1] * 50 + [2] * 2 + [3] * 10 + [0] * 8, dtype=np.uint8)
    np.save(cache / "a_label.npy", label)
    _run(tmp_path, "r1", "full", 1, [0.9, 0.2, 0.5], cache)
    _run(tmp_path, "r2", "full", 2, [0.7, 0.4, 0.4], cache)
    _run(tmp_path, "r3", "baseline", 1, [0.9, 0.0, 0.3], cache)
    records = collect([tmp_path], k=1)
    assert {r["small_classes"][0] for r in records} == {"tiny"}
    table = markdown_table(records)
    assert "| exp | full | 1,2 | 51.7 ± 1.7 | 30.0 ± 10.0 |" in table
    assert "| exp | baseline | 1 | 40.0 | 0.0 |" in table
