"""One builder: config -> data module, backbone, losses, plug-in, framework. Used by training, ``eval.py``,
``predict.py`` and the tests, so a run is rebuilt exactly as it was trained.

The backbone's channel counts come from its attributes
(:class:`~scdl.models.contracts.SegmentationBackbone`): plug-in configs leave them ``null`` and the
builder fills them, so any backbone can be swapped in with ``model=``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from scdl.models.contracts import SegmentationBackbone, check_backbone
from scdl.utils.errors import InputError

if TYPE_CHECKING:
    from scdl.frameworks.base import SemiSupervisedModule

SECOND_NETWORK = "second_network"  # model-config key: overrides for a second network (CPS's B)


def build_backbone(model_cfg: DictConfig, second: bool = False) -> SegmentationBackbone:
    """The backbone of ``cfg.model``; ``second``: with the model's ``second_network`` overrides
    (e.g. the VNet's Xavier init for CPS network B)."""
    cfg = OmegaConf.create(cast(dict, OmegaConf.to_container(model_cfg, resolve=True)))
    overrides = cfg.pop(SECOND_NETWORK, None) or {}
    if second:
        cfg = cast(DictConfig, OmegaConf.merge(cfg, overrides))
    return check_backbone(instantiate(cfg))


def build_plugin(cfg: DictConfig, host: SegmentationBackbone):
    """The plug-in of ``cfg.scdl`` (None when the config has none), sized from ``host``."""
    node = cfg.get("scdl")
    if not node or "_target_" not in node:
        return None
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    with open_dict(node):
        if "scdl" in node and node.scdl.get("x_dim") is None:
            node.scdl.x_dim = host.feature_channels
        if "bottleneck_channels" in node and node.bottleneck_channels is None:
            node.bottleneck_channels = host.bottleneck_channels
    return instantiate(node)


def build_module(cfg: DictConfig) -> SemiSupervisedModule:
    """The framework LightningModule with its backbone(s), losses and plug-in
    (``cfg.data.num_classes`` set)."""
    backbone = build_backbone(cfg.model)
    losses = {k: instantiate(v) for k, v in cfg.loss.items()}
    # construction order = random-number order: backbone, losses, plug-in, second network
    plugin = build_plugin(cfg, backbone)
    extra = {} if plugin is None else {"plugin": plugin}
    if "backbone_b" in cfg.framework:  # two-network frameworks (CPS)
        extra["backbone_b"] = build_backbone(cfg.model, second=True)
    if "sup_loss_b" in cfg.framework and "sup_b" in losses:
        extra["sup_loss_b"] = losses["sup_b"]
    return instantiate(
        cfg.framework,
        backbone=backbone,
        sup_loss=losses["sup"],
        unsup_loss=losses["unsup"],
        _convert_="all",
        **extra,
    )


def setup_data(cfg: DictConfig):
    """Prepares the cache if allowed, builds the data module and fills ``data.num_classes`` /
    ``data.class_names`` from the cache index."""
    from scdl.data.catalog import ensure_prepared

    ensure_prepared(cfg.data)
    datamodule = instantiate(cfg.data.module, _convert_="all")
    datamodule.prepare_split()
    with open_dict(cfg):
        if cfg.data.get("num_classes") not in (None, datamodule.num_classes):
            raise InputError(
                f"data.num_classes={cfg.data.num_classes} but the data set has "
                f"{datamodule.num_classes} classes ({datamodule.class_names})"
            )
        cfg.data.num_classes = datamodule.num_classes
        cfg.data.class_names = list(datamodule.class_names)
    return datamodule
