"""From a ``data`` config to a ready cache: read the raw layout, generate the phantom if asked,
preprocess once. Used by ``src/prepare_data.py`` and, for the phantom, by ``train`` itself."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from scdl.data.layouts import RawDataset, read_nnunet_raw
from scdl.data.prepare import PreprocessProtocol, prepare_dataset, read_index

READERS = {"nnunet": read_nnunet_raw, "phantom": read_nnunet_raw}


def protocol_from_config(cfg: DictConfig | dict) -> PreprocessProtocol:
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    d.pop("_target_", None)
    # fixed types: the protocol hash must not depend on "-125" vs "-125.0" in a YAML file
    for key, typ in (("spacing", float), ("resize", int), ("clip", float)):
        if d.get(key) is not None:
            d[key] = tuple(typ(v) for v in d[key])
    return PreprocessProtocol(**d)


def read_raw(data_cfg: DictConfig) -> RawDataset:
    layout = data_cfg.layout
    if layout not in READERS:
        raise ValueError(f"unknown data layout {layout!r}; known: {sorted(READERS)}")
    raw_dir = Path(data_cfg.raw_dir)
    if layout == "phantom" and not (raw_dir / "dataset.json").is_file():
        from scdl.data.phantom import write_phantom

        write_phantom(raw_dir, int(data_cfg.phantom.num_cases), int(data_cfg.phantom.seed))
    if not raw_dir.exists():
        raise FileNotFoundError(
            f"raw data folder {raw_dir} does not exist: set data.raw_dir (or data.root) to the "
            f"folder of the {data_cfg.name} download"
        )
    return READERS[layout](raw_dir)


def prepare_from_config(data_cfg: DictConfig, progress: bool = True) -> Path:
    """Generates (phantom) and preprocesses the data set of ``data_cfg``; returns the cache folder."""
    raw = read_raw(data_cfg)
    return prepare_dataset(
        raw, protocol_from_config(data_cfg.protocol), data_cfg.cache_dir, progress
    )


def ensure_prepared(data_cfg: DictConfig) -> Path:
    """Prepares the cache when ``data.auto_prepare`` is set and the cache is missing or stale."""
    cache = Path(data_cfg.cache_dir)
    protocol = protocol_from_config(data_cfg.protocol)
    try:
        stale = read_index(cache).get("protocol_hash") != protocol.hash
    except FileNotFoundError:
        stale = True
    if stale and data_cfg.get("auto_prepare", False):
        return prepare_from_config(data_cfg)
    if stale:
        read_index(cache)  # raises the helpful "run prepare_data" error when missing
        raise RuntimeError(
            f"the cache {cache} was written with another preprocessing protocol; run "
            "`python src/prepare_data.py` with this data config again"
        )
    return cache
