"""The notebooks (stored without outputs, inputs as papermill parameters, no copies of package
code), their helpers (scdl.reporting.figures), the Markdown export of ``make notebooks``, quiet
logs and progress lines; the slow tests execute the three notebooks end to end on the tiny phantom
and check a training log for duplicated lines and third-party tips."""

from __future__ import annotations

import ast
import base64
import importlib.util
import io
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, compose_cfg, tiny_train_overrides

ROOT = REPO_ROOT
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
TINY_SPLIT = "data.module.num_val=1 data.module.num_test=1 data.module.num_labeled=2"


def _runner():
    """``notebooks/run_notebooks.py`` (the script of ``make notebooks``) as a module."""
    spec = importlib.util.spec_from_file_location(
        "run_notebooks", ROOT / "notebooks" / "run_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_the_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_data.ipynb",
        "02_results.ipynb",
        "03_scdl_embeddings.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    for cell in _code_cells(path):
        assert cell["outputs"] == [] and cell["execution_count"] is None, (
            f"{path.name}: stored with outputs; clear them before committing"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_takes_parameters_and_uses_the_package(path):
    cells = _code_cells(path)
    params = cells[0]
    assert "parameters" in params["metadata"].get("tags", [])
    # papermill injects its values in a cell after this one: here only names = literals
    tree = ast.parse("".join(params["source"]))
    assert tree.body and all(
        isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) for node in tree.body
    ), f"{path.name}: the parameters cell may only assign literals (derive values in the next cell)"
    assert not any("os.environ" in "".join(c["source"]) for c in cells)
    for cell in cells:
        source = "".join(cell["source"])
        # plotting and analysis live in scdl.reporting.figures and the tools it reuses
        assert not re.search(r"^\s*(def|class) ", source, flags=re.M), (
            f"{path.name}: defines code; put it in the package (scdl.reporting.figures)"
        )
    assert any("scdl.reporting" in "".join(c["source"]) for c in cells)


def test_markdown_export_writes_text_tables_and_figures(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="the notebooks extra (make test-all)")
    pytest.importorskip("nbconvert", reason="the notebooks extra (make test-all)")
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Title"),
            new_code_cell(
                "print('x')",
                outputs=[
                    new_output("stream", name="stdout", text="\x1b[1mbold\x1b[0m line\n"),
                    new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
                    new_output("display_data", data={"text/markdown": "| a |\n|---|\n| 1 |"}),
                ],
            ),
        ]
    )
    nb.metadata["language_info"] = {"name": "python"}  # as an executed notebook has
    nbformat.validate(nb)
    md = _runner().to_markdown(nb, "demo", tmp_path)
    text = md.read_text()
    assert "# Title" in text and "```python\nprint('x')\n```" in text
    assert "bold line" in text and "\x1b" not in text
    assert "| a |" in text and "<Figure>" not in text
    [figure] = (tmp_path / "demo_files").glob("*.png")
    assert figure.read_bytes().startswith(b"\x89PNG") and f"(demo_files/{figure.name})" in text


def _fake_run(root: Path, name: str, cfg: dict, csv_text: str | None = "step,val/dice\n9,0.5\n"):
    from omegaconf import OmegaConf

    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    if csv_text is not None:
        (run / "csv").mkdir()
        (run / "csv" / "metrics.csv").write_text(csv_text)
    return run


def test_find_runs_finds_training_runs_anywhere_and_nothing_else(tmp_path):
    from scdl.reporting.figures import describe_runs
    from scdl.runs import find_training_runs as find_runs

    assert find_runs(tmp_path / "missing") == []
    assert find_runs(tmp_path) == []
    train = {"framework": {}, "experiment_name": "phantom_mt", "seed": 1, "ablation_name": "none"}
    single = _fake_run(tmp_path, "train/runs/phantom_mt/a", train)
    multi = _fake_run(tmp_path, "train/multiruns/sweep/0_phantom_mt_none_seed1", train)
    debug = _fake_run(tmp_path, "debug/runs/phantom_mt/b", train)
    _fake_run(tmp_path, "eval/2026-01-01", {"ckpt_path": "x", "protocol": "paper"})  # not training
    _fake_run(tmp_path, "train/runs/phantom_mt/started", train, csv_text=None)  # nothing logged
    assert find_runs(tmp_path) == sorted([single, multi, debug])
    rows = describe_runs([single], tmp_path)
    assert rows[0]["run"] == "train/runs/phantom_mt/a"
    assert rows[0]["best val Dice %"] == 50.0 and rows[0]["best step"] == 10
    assert rows[0]["method"] == "phantom_mt" and rows[0]["test Dice %"] is None


class _FakeRun:
    def __init__(self, name, config, summary, history):
        self.name, self.config, self.summary, self.group = name, config, summary, "g/1"
        self._history = history

    def scan_history(self, keys):
        return iter(self._history)


class _FakeApi:
    def __init__(self, runs):
        self.runs_ = runs
        self.calls = []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return self.runs_


def test_wandb_records_read_curves_and_per_class_dice():
    from scdl.reporting.figures import parse_wandb_target, wandb_records

    assert parse_wandb_target("me/scdl") == ("me/scdl", None)
    assert parse_wandb_target("me/scdl/paper_table/synapse") == ("me/scdl", "paper_table/synapse")
    with pytest.raises(ValueError):
        parse_wandb_target("scdl")
    run = _FakeRun(
        "r1",
        {"method_name": "Mean teacher + SCDL", "ablation_name": "no_sac", "seed": 2},
        {"test/dice": 0.4, "test/dice_liver": 0.9, "test/dice_minority": 0.1, "other": 1},
        [
            {"trainer/global_step": 9, "val/dice": 0.2},
            {"trainer/global_step": 12, "val/dice": None},
            {"trainer/global_step": 19, "val/dice": 0.3},
        ],
    )
    api = _FakeApi([run])
    (rec,) = wandb_records("me/scdl", "paper_table/synapse", api=api)
    assert api.calls == [("me/scdl", {"group": "paper_table/synapse"})]
    assert rec["method"] == "Mean teacher + SCDL (no_sac)" and rec["seed"] == 2
    assert rec["val_dice"][0].tolist() == [9, 19] and rec["val_dice"][1].tolist() == [0.2, 0.3]
    assert rec["per_class"] == {"liver": 0.9} and rec["test_dice"] == 0.4


def test_data_helpers_on_the_phantom(phantom_cache):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scdl.data.cache import load_cached_case, read_index
    from scdl.reporting import figures as F

    names = read_index(phantom_cache)["class_names"]
    split = F.load_split(phantom_cache, None, TINY_SPLIT.split())
    assert len(split.labeled) == 2 and len(split.test) == 1
    volumes = F.case_class_volumes(phantom_cache, split.labeled)
    assert volumes.shape == (2, len(names)) and (volumes[:, 1:] > 0).all()
    liver = names.index("liver")
    adrenal = names.index("right_adrenal_gland")
    assert (volumes[:, liver] > 100 * volumes[:, adrenal]).all()  # the imbalance of the phantom
    case = load_cached_case(phantom_cache, split.labeled[0])
    point = F.focus_point(case.label)
    smallest = int(case.label[point])
    counts = np.bincount(case.label.ravel())
    assert smallest > 0 and counts[smallest] == min(c for c in counts[1:] if c > 0)
    fig, axes = plt.subplots(1, 4)
    shown = F.draw_planes(axes[:3], case.image, case.label, names, case.meta["spacing"])
    assert smallest in shown
    F.class_legend(fig, shown, names)
    F.draw_case_volumes(axes[3], volumes, names, labeled=[True, False])
    plt.close(fig)


def test_token_cloud_separation_measures():
    from scdl.reporting.figures import TokenCloud, centroid_accuracy, project_2d

    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=float)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cloud = TokenCloud(
        emb, np.array([0, 0, 2, 2]), np.array([[0, 1.0], [1, 0], [1, 0]]), ["a", "b", "c"], "x"
    )
    assert centroid_accuracy(cloud) == {"a": 1.0, "c": 1.0}
    assert centroid_accuracy(cloud, use_proxies=True) == {"a": 0.0, "c": 0.0}
    xy, method = project_2d(emb, "pca")
    assert xy.shape == (4, 2) and method == "PCA"


def test_plain_progress_lines_when_not_a_terminal():
    from scdl.utils.progress import plain_progress

    out = io.StringIO()
    assert list(plain_progress(list(range(30)), "preprocess", stream=out)) == list(range(30))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("preprocess: 30/30 (100%), 0:00 elapsed")
    assert lines[0].startswith("preprocess: 3/30 (10%)")


def test_quiet_logs_drops_tips_and_known_noise_only(caplog):
    from scdl.utils.quiet import quiet_logs

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_logs()
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1
        )
        warnings.warn(
            "Precision bf16-mixed is not supported by the model summary.", UserWarning, stacklevel=1
        )
        warnings.warn("IProgress not found. Please update jupyter and ipywidgets.", stacklevel=1)
        warnings.warn("something the user should see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something the user should see"]
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        rank_zero.info("💡 Tip: For seamless cloud logging ... litlogger")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    # the root logger has handlers here (pytest's): Lightning's own console handler is gone
    assert not [
        h for h in logging.getLogger("lightning").handlers if type(h) is logging.StreamHandler
    ]


# --------------------------------------------------------------------------------------------------
# Slow: the notebooks end to end, and a real training log
# --------------------------------------------------------------------------------------------------


def _train_tiny(cache: Path, logs: Path, experiment: str) -> Path:
    """A 4-step run of ``experiment`` laid out as src/train.py leaves it under ``logs/debug``, with
    the paper-protocol evaluation of its best checkpoint."""
    from omegaconf import OmegaConf

    from scdl.training import train

    run_dir = logs / "debug" / "runs" / experiment / "tiny"
    overrides = [
        f"experiment={experiment}",
        *tiny_train_overrides(cache, logs.parent),
        f"paths.log_dir={logs}",
        "post_eval=[paper]",
    ]
    cfg = compose_cfg(overrides, output_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    train(cfg)
    return run_dir


@pytest.mark.slow
def test_notebooks_run_end_to_end_on_the_phantom(phantom_cache, tmp_path):
    pytest.importorskip("papermill")
    pytest.importorskip("ipykernel")
    logs = tmp_path / "logs"
    baseline = _train_tiny(phantom_cache, logs, "phantom_mt")
    scdl = _train_tiny(phantom_cache, logs, "phantom_scdl")
    assert (scdl / "eval" / "test_paper" / "metrics.json").is_file()
    figures, out = tmp_path / "figures", tmp_path / "out"
    parameters = {
        "DATA": str(phantom_cache),
        "DATA_OVERRIDES": TINY_SPLIT,
        "LOGS": str(logs),
        "NUM_CASES": 1,
        "PROJECTION": "pca",
        "FIGURES": str(figures),
    }
    runner = _runner()
    texts = {}
    for path in NOTEBOOKS:
        nb = runner.execute(path, parameters, timeout=600)
        texts[path.stem] = runner.to_markdown(nb, path.stem, out).read_text()
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert not errors
        assert "Warning:" not in texts[path.stem], "third-party warnings in the notebook output"
    assert sorted(p.name for p in figures.glob("*.png")) == [
        "data_class_volumes.png",
        "data_planes.png",
        "results_dice.png",
        "results_small_organ.png",
        "scdl_embeddings.png",
    ]
    assert "split:" in texts["01_data"] and "minority classes" in texts["01_data"]
    assert "Mean teacher + SCDL" in texts["02_results"] and "paper protocol" in texts["02_results"]
    assert "2 training run(s)" in texts["02_results"]
    assert str(baseline) in texts["03_scdl_embeddings"] and str(scdl) in texts["03_scdl_embeddings"]
    assert len(list(out.glob("*_files/*.png"))) >= 5

    empty = {**parameters, "LOGS": str(tmp_path / "empty")}
    nb = runner.execute(ROOT / "notebooks" / "02_results.ipynb", empty, timeout=600)
    text = runner.to_markdown(nb, "02_results", tmp_path / "empty_out").read_text()
    assert "No training runs found under" in text


LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[[\w.]+\]\[\w+\] - (.*)$")


@pytest.mark.slow
def test_training_log_has_each_line_once_and_no_tips(phantom_cache, tmp_path):
    overrides = [
        "experiment=phantom_scdl",
        *tiny_train_overrides(phantom_cache, tmp_path),
        "trainer.precision=bf16-mixed",  # the precision trainer=cpu picks with native bf16
        "run_name=quiet",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    for noise in ("Tip:", "litlogger", "LeafSpec", "not supported by the model summary"):
        assert noise not in output, f"{noise!r} in the training output"
    lines = [line for chunk in output.splitlines() for line in chunk.split("\r")]
    assert not [line for line in lines if line.startswith("INFO: ")], "Lightning's own handler"
    messages = [m.group(1) for line in lines if (m := LOG_LINE.match(line))]
    assert any(m.startswith("Seed set to") for m in messages)
    repeated = [m for m, n in Counter(messages).items() if n > 1]
    assert not repeated, f"log lines printed more than once: {repeated}"
    log_file = tmp_path / "logs" / "debug" / "runs" / "phantom_scdl" / "quiet" / "train.log"
    file_lines = log_file.read_text().splitlines()
    assert len(file_lines) == len(set(file_lines))
