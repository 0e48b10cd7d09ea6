"""The extension points of docs/extending.md "Extending" work as documented: a data set reader by dotted
path, a framework through the plug-in hooks, a backbone through the contract."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from scdl.data.catalog import read_raw


def test_a_reader_function_is_a_data_layout(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, labeled in enumerate([True, True, False]):
        img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
        nib.save(img, raw / f"c{i}_img.nii.gz")
        if labeled:
            nib.save(
                nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), raw / f"c{i}_seg.nii.gz"
            )
    cfg = OmegaConf.create(
        {
            "name": "flat",
            "root": str(tmp_path),
            "raw_dir": str(raw),
            "layout": "custom_layout.read_flat_folder",
            "reader": {"classes": ["bg", "liver"]},
        }
    )
    data = read_raw(cfg)
    assert [c.case_id for c in data.cases] == ["c0", "c1", "c2"]
    assert len(data.labeled) == 2 and data.class_names == ["bg", "liver"]
    cfg.layout = "custom_layout.no_such_reader"
    with pytest.raises(ValueError, match="data.layout='custom_layout.no_such_reader'"):
        read_raw(cfg)
    cfg.layout = "nonsense"
    with pytest.raises(ValueError, match="dotted path"):
        read_raw(cfg)


def test_a_framework_gets_the_plugin_through_the_hooks_alone():
    import torch

    from custom_framework import SupervisedOnly
    from scdl.losses import CEDiceLoss
    from scdl.models.scdl import SCDL
    from scdl.models.vnet import VNet
    from scdl.plugins import SCDLPlugin

    torch.manual_seed(0)
    plugin = SCDLPlugin(
        SCDL(4, x_dim=4, z_dim=8, sample_num=3), token_grid=2, prior_feedback="head"
    )
    m = SupervisedOnly(
        VNet(num_classes=4, base_filters=4), CEDiceLoss(), None, plugin=plugin, num_classes=4
    )
    m.log_dict = lambda *a, **k: None  # no trainer attached
    m.log = lambda *a, **k: None
    batch = {
        "labeled": {
            "image": torch.randn(2, 1, 16, 16, 16),
            "label": torch.randint(0, 4, (2, 16, 16, 16)),
        }
    }
    m.training_step(batch, 0).backward()
    assert m.plugin.prior_to_feat.weight.grad.abs().sum() > 0  # SCDL trained through the hooks
    assert m.plugin.scdl.proxies.weight.grad.abs().sum() > 0
    m.eval()
    assert m.segment(batch["labeled"]["image"]).shape == (2, 4, 16, 16, 16)


def test_frameworks_are_plugin_hosts():
    from custom_framework import SupervisedOnly
    from scdl.frameworks.cps import CPSModule
    from scdl.frameworks.mean_teacher import MeanTeacherModule
    from scdl.frameworks.plugin import PluginHost

    hooks = ("plugin_host", "plugin_features", "host_train_step", "host_inference_logits")
    assert all(hasattr(PluginHost, name) for name in hooks)
    for cls in (MeanTeacherModule, CPSModule, SupervisedOnly):
        assert all(hasattr(cls, name) for name in hooks), cls
