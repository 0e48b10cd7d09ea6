"""Shared fixtures: a tiny phantom data set (raw NIfTI + preprocessed cache) and Hydra composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from scdl.utils.config import conf_dir, register_resolvers  # noqa: E402

CONF_DIR = str(conf_dir())  # the package's configs (src/scdl/conf)
REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout: src/<entry>.py, bench/, docs/
TINY_PHANTOM_CASES = 6


@pytest.fixture(scope="session")
def phantom_raw(tmp_path_factory) -> Path:
    """6 phantom cases in the nnU-Net raw layout (written once per test session)."""
    from scdl.data.phantom import write_phantom

    return write_phantom(
        tmp_path_factory.mktemp("phantom") / "raw", TINY_PHANTOM_CASES, seed=0, progress=False
    )


@pytest.fixture(scope="session")
def phantom_cache(phantom_raw) -> Path:
    """The preprocessed cache of :func:`phantom_raw` (phantom protocol: 1.5 x 1.5 x 2 mm, window)."""
    from scdl.data.layouts import read_nnunet_raw
    from scdl.data.prepare import PreprocessProtocol, prepare_dataset

    protocol = PreprocessProtocol(name="phantom")
    return prepare_dataset(
        read_nnunet_raw(phantom_raw), protocol, phantom_raw.parent / "cache", progress=False
    )


def compose_cfg(
    overrides: list[str] | None = None, config_name: str = "train", output_dir: Path | None = None
) -> DictConfig:
    """Composes a config as ``src/<entry>.py`` would and registers it as the current Hydra config
    (so ``${hydra:runtime.output_dir}`` resolves)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides or [], return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    GlobalHydra.instance().clear()
    with open_dict(cfg):  # as under @hydra.main: the job config has no `hydra` node
        del cfg["hydra"]
    return cfg


def tiny_train_overrides(cache: Path, tmp_path: Path) -> list[str]:
    """Overrides that make any experiment a seconds-long CPU run on the tiny phantom cache."""
    return [
        "debug=fast",
        "logger=csv",
        f"paths.log_dir={tmp_path}/logs",
        f"data.cache_dir={cache}",
        "data.auto_prepare=false",
        "data.module.num_val=1",
        "data.module.num_test=1",
        "data.module.num_labeled=2",
        "model.base_filters=4",
    ]


def semi_batch(num_classes: int, size: int, seed: int, n_labeled: int = 2, n_unlabeled: int = 2):
    """A random training batch in the data module's layout: ``labeled`` image (Bl, 1, S, S, S) and
    label (Bl, S, S, S), ``unlabeled`` image (Bu, 1, S, S, S), drawn in that order from ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    shape = (size, size, size)
    return {
        "labeled": {
            "image": torch.randn(n_labeled, 1, *shape, generator=g),
            "label": torch.randint(0, num_classes, (n_labeled, *shape), generator=g),
        },
        "unlabeled": {"image": torch.randn(n_unlabeled, 1, *shape, generator=g)},
    }
