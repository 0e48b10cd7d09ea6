"""What an installed scdl relies on: the console commands of ``[project.scripts]`` exist, the
checkout's ``src/<name>.py`` run the same commands, the configs live in the package, and the data
and log folders never depend on the current directory. (``.ci/wheel_check`` installs the wheel
and runs the commands from a folder outside the checkout.)"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import tomllib

from scdl.utils.config import conf_dir, project_root

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_console_script_names_a_callable(name):
    module, _, function = console_scripts()[name].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_every_entry_script_of_the_checkout_is_an_installed_command():
    targets = set(console_scripts().values())
    for script in sorted((ROOT / "src").glob("*.py")):
        tree = ast.parse(script.read_text())
        imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert [(i.module, [a.name for a in i.names]) for i in imports] == [
            (f"scdl.commands.{script.stem}", ["command"])
        ], f"{script} should only call scdl.commands.{script.stem}.command"
        assert f"scdl.commands.{script.stem}:command" in targets, script.name


def test_configs_and_split_files_are_package_data():
    assert conf_dir() == ROOT / "src" / "scdl" / "conf"
    packaged = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = packaged["package-data"]["scdl.conf"]
    suffixes = {p.suffix for p in conf_dir().rglob("*") if p.is_file() and p.name[0] != "."}
    assert suffixes <= {".yaml", ".json", ".py"}, "a config file type the wheel would leave out"
    assert {"**/*.yaml", "**/*.json"} <= set(patterns)
    assert (conf_dir() / "data" / "splits" / "amos" / "5p.json").is_file()


def test_data_and_logs_do_not_follow_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("SCDL_HOME", raising=False)
    monkeypatch.delenv("PROJECT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert project_root() == ROOT  # the checkout, wherever the command runs
    monkeypatch.setenv("SCDL_HOME", str(tmp_path / "home"))
    assert project_root() == tmp_path / "home"
    monkeypatch.setenv("SCDL_HOME", "~/elsewhere")
    assert project_root() == Path.home() / "elsewhere"


def test_the_composed_data_paths_are_absolute_outside_the_checkout(tmp_path, monkeypatch):
    from scdl.utils.config import compose_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCDL_HOME", str(tmp_path / "home"))
    cfg = compose_config("train", ["experiment=amos_scdl"])
    assert cfg.paths.data_dir == str(tmp_path / "home" / "data")
    split = Path(cfg.data.module.split_file)
    assert split.is_absolute() and split.is_file() and conf_dir() in split.parents


def test_the_makefile_pins_the_torch_of_the_lock():
    """make setup installs torch==TORCH_VERSION (never an unpinned, newest CUDA torch), the same
    version requirements/lock.txt pins."""
    import re

    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r"^TORCH_VERSION := (\S+)$", makefile, re.M).group(1)
    assert "torch==$(TORCH_VERSION)" in makefile
    assert f"torch=={version}\n" in (ROOT / "requirements" / "lock.txt").read_text()
    assert (
        "torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))" in makefile
    )


def test_without_an_nvidia_driver_make_setup_adds_the_cpu_index_of_torch(tmp_path):
    """PyPI's Linux torch is the multi-GB CUDA build: on a machine without nvidia-smi make setup
    adds the PyTorch CPU index (2.13.0+cpu outranks 2.13.0); with nvidia-smi it leaves the
    index alone; TORCH_INDEX given by the user wins."""
    import os
    import shutil
    import subprocess

    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")

    def index(path: str, *args: str) -> str:
        out = subprocess.run(
            [
                make,
                "-s",
                "-C",
                str(ROOT),
                "--eval",
                "print-index: ; @echo '$(TORCH_INDEX)'",
                "print-index",
                *args,
            ],
            env={**os.environ, "PATH": path},
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    plain = str(tmp_path / "plain")
    os.mkdir(plain)
    for tool in ("sh", "bash", "echo"):  # what make's shell needs, no nvidia-smi
        if shutil.which(tool):
            os.symlink(shutil.which(tool), os.path.join(plain, tool))
    assert index(plain) == "https://download.pytorch.org/whl/cpu"
    gpu = tmp_path / "gpu"
    gpu.mkdir()
    (gpu / "nvidia-smi").write_text("#!/bin/sh\n")
    (gpu / "nvidia-smi").chmod(0o755)
    assert index(f"{gpu}:{plain}") == ""
    assert index(plain, "TORCH_INDEX=https://example.org/cu128") == "https://example.org/cu128"
