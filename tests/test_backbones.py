"""The SegmentationBackbone contract (scdl.models.contracts) on every shipped backbone: the VNet and
the MONAI wrappers (scdl.models.monai_backbones). Shapes of the encode / decode / head split,
``forward == head(decode(encode(x)))``, SCDL training through each (head and bottleneck prior), the
config path (``model=monai_unet`` / ``model=swin_unetr``) and the patch-size check."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg, tiny_train_overrides
from scdl.build import build_backbone, build_plugin
from scdl.config_checks import ConfigError, validate_config
from scdl.frameworks.mean_teacher import MeanTeacherModule
from scdl.losses import CEDiceLoss
from scdl.losses.consistency import PseudoLabelLoss
from scdl.models.contracts import SegmentationBackbone, check_backbone
from scdl.models.monai_backbones import MonaiSwinUNETR, MonaiUNet
from scdl.models.scdl import SCDL
from scdl.models.vnet import VNet
from scdl.plugins.scdl_plugin import SCDLPlugin

C = 4
# tiny settings for 2 CPU cores; (factory, patch side): the smallest valid training patch of each
# (instance norm needs a bottleneck of >= 2 voxels: 2 * size_divisor; the tiny Swin uses batch norm)
BACKBONES = {
    "vnet": (lambda: VNet(num_classes=C, base_filters=4), 16),
    "monai_unet": (lambda: MonaiUNet(num_classes=C, base_filters=4), 32),
    "swin_unetr": (
        lambda: MonaiSwinUNETR(
            num_classes=C,
            feature_size=12,
            depths=(1, 1, 1, 1),
            num_heads=(1, 1, 1, 1),
            norm_name="batch",
        ),
        32,
    ),
}
# feature_channels, bottleneck_channels, size_divisor, bottleneck side / input side
EXPECTED = {"vnet": (4, 64, 16, 16), "monai_unet": (4, 64, 16, 16), "swin_unetr": (12, 192, 32, 32)}


def _backbone(name: str):
    torch.manual_seed(0)
    make, side = BACKBONES[name]
    return make(), side


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_meets_the_contract(name):
    net, side = _backbone(name)
    assert check_backbone(net) is net and isinstance(net, SegmentationBackbone)
    features, bottleneck, divisor, down = EXPECTED[name]
    assert (net.num_classes, net.feature_channels, net.bottleneck_channels) == (
        C,
        features,
        bottleneck,
    )
    assert net.size_divisor == divisor and side % divisor == 0
    x = torch.randn(2, 1, side, side, side)
    net.eval()
    with torch.no_grad():
        skips = net.encode(x)
        feats = net.decode(skips)
        logits = net.head(feats)
        direct = net(x)
    assert skips[-1].shape == (2, bottleneck, *(3 * [side // down]))
    assert feats.shape == (2, features, side, side, side)
    assert logits.shape == (2, C, side, side, side)
    torch.testing.assert_close(direct, logits)


@pytest.mark.parametrize("cls", [MonaiUNet, MonaiSwinUNETR])
def test_size_divisor_is_a_class_attribute(cls):
    """config_checks reads it from the class, without building the network."""
    assert cls.__dict__["size_divisor"] in (16, 32)


def test_monai_wrappers_keep_monai_forward():
    """The split is MONAI's own forward: same logits as the parent class's forward."""
    from monai.networks.nets import DynUNet, SwinUNETR

    for name, parent in (("monai_unet", DynUNet), ("swin_unetr", SwinUNETR)):
        net, side = _backbone(name)
        net.eval()
        x = torch.randn(1, 1, side, side, side)
        with torch.no_grad():
            torch.testing.assert_close(net(x), parent.forward(net, x))


def test_instance_norm_too_small_a_patch_fails_clearly():
    net = MonaiUNet(num_classes=C, base_filters=4)  # instance norm (the config's default)
    with pytest.raises(ValueError, match=r"at least 32 with instance normalisation"):
        net(torch.randn(2, 1, 16, 16, 16))
    with pytest.raises(ValueError, match=r"multiples of 16"):
        net(torch.randn(2, 1, 40, 40, 40))


def _batch(side: int):
    g = torch.Generator().manual_seed(1)
    shape = (side, side, side)
    return {
        "labeled": {
            "image": torch.randn(2, 1, *shape, generator=g),
            "label": torch.randint(0, C, (2, *shape), generator=g),
        },
        "unlabeled": {"image": torch.randn(2, 1, *shape, generator=g)},
    }


@pytest.mark.parametrize("prior", ["head", "bottleneck"])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_scdl_trains_every_parameter_with_each_backbone(name, prior):
    net, side = _backbone(name)
    plugin = SCDLPlugin(
        SCDL(C, x_dim=net.feature_channels, z_dim=8, sample_num=3),
        token_grid=2,
        prior_feedback=prior,
        bottleneck_channels=net.bottleneck_channels,
    )
    m = MeanTeacherModule(
        backbone=net,
        sup_loss=CEDiceLoss(),
        unsup_loss=PseudoLabelLoss(CEDiceLoss()),
        num_classes=C,
        plugin=plugin,
    )
    m.train()
    m.log_dict = lambda *a, **k: None  # no trainer attached
    m.log = lambda *a, **k: None
    loss = m.training_step(_batch(side), 0)
    assert torch.isfinite(loss)
    loss.backward()
    # DDP's condition: every trainable parameter takes part in the loss, with a finite gradient
    trainable = {n: p for n, p in m.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []
    assert [n for n, p in trainable.items() if not torch.isfinite(p.grad).all()] == []
    assert any(n.startswith("student.") for n in trainable)
    assert all(p.grad is None for p in m.teacher.parameters())
    # sigma_emb only feeds the bottleneck prior: frozen (no gradient) with the head prior
    assert plugin.scdl.sigma_emb.requires_grad == (prior == "bottleneck")
    if prior == "bottleneck":
        assert plugin.prior_to_bottleneck.weight.grad.abs().sum() > 0
    else:
        assert plugin.prior_to_feat.weight.grad.abs().sum() > 0


SMALL = {
    "monai_unet": ["model.base_filters=4"],
    "swin_unetr": [
        "model.feature_size=12",
        "model.depths=[1,1,1,1]",
        "model.num_heads=[1,1,1,1]",
        "data.module.patch_size=[64,64,64]",
    ],
}


@pytest.mark.parametrize("model", list(SMALL))
def test_model_configs_build_both_networks_and_size_the_plugin(model, tmp_path):
    cfg = compose_cfg(
        ["experiment=phantom_scdl", f"model={model}", "data.num_classes=4", *SMALL[model]],
        output_dir=tmp_path,
    )
    validate_config(cfg)
    torch.manual_seed(0)
    a = build_backbone(cfg.model)
    b = build_backbone(cfg.model, second=True)  # second_network: {} -> same settings, new init
    assert type(a) is type(b) and a.num_classes == 4
    assert a.feature_channels == b.feature_channels
    pa, pb = next(iter(a.parameters())), next(iter(b.parameters()))
    assert pa.shape == pb.shape and not torch.equal(pa, pb)
    plugin = build_plugin(cfg, a)
    assert plugin.scdl.x_dim == a.feature_channels


def test_swin_unetr_rejects_the_phantom_patch(tmp_path):
    """48^3 (the phantom experiments' patch) is not a multiple of 32: validate_config names the key,
    the model and the divisor; 64^3 passes."""
    base = ["experiment=phantom_scdl", "model=swin_unetr", f"paths.log_dir={tmp_path}"]
    with pytest.raises(ConfigError) as info:
        validate_config(compose_cfg(base, output_dir=tmp_path))
    msg = str(info.value)
    assert "data.module.patch_size=[48, 48, 48]" in msg
    assert "MonaiSwinUNETR" in msg and "multiple of 32" in msg
    validate_config(compose_cfg([*base, "data.module.patch_size=[64,64,64]"], output_dir=tmp_path))
    # the MONAI U-Net (divisor 16) takes the phantom patch as it is
    validate_config(compose_cfg([*base, "model=monai_unet"], output_dir=tmp_path))


def test_tiny_scdl_run_with_the_monai_unet(phantom_cache, tmp_path):
    from scdl.training import train

    out = tmp_path / "run"
    # tiny_train_overrides sets model.base_filters=4, which MonaiUNet has too
    cfg = compose_cfg(
        [
            "experiment=phantom_scdl",
            "model=monai_unet",
            *tiny_train_overrides(phantom_cache, tmp_path),
        ],
        output_dir=out,
    )
    assert cfg.model._target_ == "scdl.models.monai_backbones.MonaiUNet"
    metrics = train(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0
    assert "train/scdl_aux" in metrics
    assert (out / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow  # ~10 s alone on 2 cores, a minute when they are shared
def test_tiny_scdl_run_with_the_swin_unetr(phantom_cache, tmp_path):
    """debug=fast's 32^3 patch is valid for the Swin (a multiple of 32) once batch norm replaces
    instance norm (which would need 64^3)."""
    from scdl.training import train

    out = tmp_path / "run"
    overrides = [
        o for o in tiny_train_overrides(phantom_cache, tmp_path) if not o.startswith("model.")
    ]
    cfg = compose_cfg(
        [
            "experiment=phantom_scdl",
            "model=swin_unetr",
            *overrides,
            *SMALL["swin_unetr"][:-1],  # the tiny Swin, at debug=fast's patch
            "model.norm_name=batch",
        ],
        output_dir=out,
    )
    assert list(cfg.data.module.patch_size) == [32, 32, 32]
    metrics = train(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0
    assert "train/scdl_aux" in metrics
