"""SCDL wired into the mean teacher: prior feedback, parameter groups, loss plumbing, checkpoints."""

import math
from functools import partial

import pytest
import torch

from conftest import semi_batch
from scdl.frameworks.mean_teacher import MeanTeacherModule
from scdl.losses import CEDiceLoss
from scdl.losses.consistency import PseudoLabelLoss
from scdl.models.scdl import SCDL
from scdl.models.vnet import VNet
from scdl.plugins.scdl_plugin import SCDLPlugin

C = 4


def _module(prior="head", **plugin_kw):
    torch.manual_seed(0)
    plugin = (
        None
        if prior is None
        else SCDLPlugin(
            SCDL(C, x_dim=4, z_dim=16, sample_num=5),
            token_grid=4,
            prior_feedback=prior,
            bottleneck_channels=64,
            **plugin_kw,
        )
    )
    return MeanTeacherModule(
        backbone=VNet(num_classes=C, base_filters=4),
        sup_loss=CEDiceLoss(),
        unsup_loss=PseudoLabelLoss(CEDiceLoss()),
        num_classes=C,
        plugin=plugin,
    )


def _batch():
    return semi_batch(C, 16, seed=1)


def test_head_prior_changes_logits_and_gets_gradient():
    m = _module("head")
    x = torch.randn(2, 1, 16, 16, 16)
    m.train()
    with torch.no_grad():
        plain = m.student(x)
    torch.manual_seed(3)
    logits = m.segment(x)
    assert logits.shape == plain.shape
    assert not torch.allclose(logits, plain)  # the prior is added before the classifier
    logits.sum().backward()
    assert m.plugin.prior_to_feat.weight.grad is not None
    assert m.plugin.prior_to_feat.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.plugin.scdl.proxies.parameters())  # prior uses mu


def test_without_prior_inference_is_the_plain_backbone():
    m = _module("none")
    x = torch.randn(1, 1, 16, 16, 16)
    m.eval()
    torch.testing.assert_close(m.segment(x), m.student(x))
    assert m.plugin.prior_to_feat is None


@pytest.mark.parametrize("prior", ["head", "bottleneck", "none"])
def test_training_step_adds_scdl_terms_and_trains_every_scdl_part(prior):
    m = _module(prior)
    m.train()
    m.log_dict = lambda *a, **k: None  # no trainer attached
    m.log = lambda *a, **k: None
    loss = m.training_step(_batch(), 0)
    assert torch.isfinite(loss)
    loss.backward()
    scdl = m.plugin.scdl
    assert scdl.encoder[0].weight.grad is not None  # CDBA reaches the token encoder
    assert all(p.grad is not None for p in scdl.proxies.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
    if prior == "bottleneck":
        assert m.plugin.prior_to_bottleneck.weight.grad.abs().sum() > 0
    # DDP's condition: every trainable parameter takes part in the loss
    unused = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    assert scdl.sigma_emb.requires_grad == (prior == "bottleneck")


def _plugin_and_inputs(num_feats: int = 3):
    """A dropout-free tiny plug-in, decoder features (num_feats, 4, 16^3: 2 labeled first) and the
    labels (2, 16^3) of the labeled ones, drawn after torch.manual_seed(0)."""
    torch.manual_seed(0)
    feats = torch.randn(num_feats, 4, 16, 16, 16)
    labels = torch.randint(0, C, (2, 16, 16, 16))
    plugin = SCDLPlugin(SCDL(C, x_dim=4, z_dim=16, sample_num=5, dropout=0.0), token_grid=4)
    return plugin, feats, labels


def test_scdl_weights_scale_the_aux_loss():
    plugin, feats, labels = _plugin_and_inputs()
    torch.manual_seed(1)
    t = plugin.training_terms(feats, labels)
    expected = 0.1 * (0.3 * t.proxy_loss + 0.1 * t.sac_loss + 0.02 * t.kl_loss)
    torch.testing.assert_close(t.aux_loss, expected)
    assert t.prior_tokens.shape == (3, 64, 16) and t.labeled_token_dist.shape == (2, 64, C)
    plugin.w_sac = plugin.w_proxy = plugin.w_kl = 0.0
    torch.manual_seed(1)
    assert plugin.training_terms(feats, labels).aux_loss.item() == 0.0


def test_unlabeled_switch_controls_the_unlabeled_proxy_loss():
    plugin, feats, labels = _plugin_and_inputs(4)
    torch.manual_seed(1)
    with_unl = plugin.training_terms(feats, labels).proxy_loss
    plugin.use_unlabeled = False
    torch.manual_seed(1)
    without = plugin.training_terms(feats, labels, need_prior=False)
    torch.manual_seed(1)
    lab_only = plugin.training_terms(feats[:2], labels).proxy_loss
    torch.testing.assert_close(without.proxy_loss, lab_only)
    assert not torch.isclose(with_unl, lab_only)
    assert without.prior_tokens.shape[0] == 2  # unlabeled samples skipped entirely


def test_scdl_has_its_own_parameter_group_and_is_in_the_checkpoint():
    m = _module("head", lr_scale=0.5)
    m.optimizer_factory = partial(torch.optim.SGD, lr=0.01)
    groups = m.parameter_groups()
    assert [g["name"] for g in groups] == ["backbone", "scdl"]
    assert groups[1]["lr"] == pytest.approx(0.005)
    scdl_ids = {id(p) for p in m.plugin.parameters() if p.requires_grad}
    assert scdl_ids == {id(p) for p in groups[1]["params"]}
    assert not scdl_ids & {id(p) for p in groups[0]["params"]}
    state = m.state_dict()
    assert any(k.startswith("plugin.scdl.proxies") for k in state)
    assert any(k.startswith("plugin.prior_to_feat") for k in state)
    m2 = _module("head")
    m2.load_state_dict(state)
    torch.testing.assert_close(m2.plugin.scdl.proxies.mean, m.plugin.scdl.proxies.mean)


def test_detached_prior_trains_only_the_projection_through_the_head():
    m = _module("head", detach_prior=True)
    x = torch.randn(2, 1, 16, 16, 16)
    m.train()
    m.segment(x).sum().backward()
    assert m.plugin.prior_to_feat.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.plugin.scdl.parameters())  # proxies / encoder untouched


def test_aux_rampup_weighs_the_scdl_terms_by_the_sigmoid_ramp_of_the_host_step():
    """scdl.aux_rampup_steps=N: aux = ramp(step) * w_aux (...) with ramp = exp(-5 (1 - t/N)^2);
    0 (released) leaves the terms unscaled; the host passes its global step."""
    plugin, feats, labels = _plugin_and_inputs()
    torch.manual_seed(1)
    full = plugin.training_terms(feats, labels).aux_loss
    plugin.aux_rampup_steps = 100
    for step, weight in ((0, math.exp(-5.0)), (50, math.exp(-1.25)), (100, 1.0), (400, 1.0)):
        plugin.training_step_index = step
        torch.manual_seed(1)
        torch.testing.assert_close(plugin.training_terms(feats, labels).aux_loss, full * weight)
    with pytest.raises(ValueError, match="aux_rampup_steps"):
        SCDLPlugin(SCDL(C, x_dim=4, z_dim=16, sample_num=5), token_grid=4, aux_rampup_steps=-1)

    module = _module(aux_rampup_steps=100)  # the host tells the plug-in its step
    module.log_dict = module.log = lambda *a, **k: None
    module.training_loss(_batch(), 0)
    assert module.plugin.training_step_index == module.global_step == 0


@pytest.mark.parametrize(
    "ablation, scale, axis, ramp",
    [
        ("full", None, "class", 0),  # released
        ("plus", 0.05, "token", 100),
        ("proxy_scale", 0.05, "class", 0),
        ("token_p2e", None, "token", 0),
        ("ramp", None, "class", 100),
    ],
)
def test_variant_ablations_compose_and_reach_the_module(tmp_path, ablation, scale, axis, ramp):
    """ablation=plus and its single switches (docs/results.md "Does SCDL help?") arrive in the built module."""
    from conftest import compose_cfg
    from scdl.build import build_module

    cfg = compose_cfg(
        [
            "experiment=phantom_scdl",
            f"ablation={ablation}",
            "data.num_classes=4",
            "model.base_filters=4",
        ],
        output_dir=tmp_path,
    )
    assert cfg.ablation_name == ablation
    module = build_module(cfg)
    plugin = module.plugin
    assert plugin.aux_rampup_steps == ramp
    assert plugin.scdl.p2e_axis == axis
    proxy_std = plugin.scdl.proxies.scale.detach()
    if scale is None:  # released Xavier table: softplus(U(-a, a)), about 0.69 per dimension
        assert 0.6 < float(proxy_std.mean()) < 0.8
    else:
        torch.testing.assert_close(proxy_std, torch.full_like(proxy_std, scale))


def test_plus_makes_the_kl_active_and_ramps_the_scdl_terms(tmp_path):
    """The losses change as documented: the released class-axis KL is 0, plus's token axis is not;
    at step 0 the ramp scales the SCDL terms by exp(-5)."""
    from conftest import compose_cfg
    from scdl.build import build_module

    out = {}
    for ablation in ("full", "plus"):
        cfg = compose_cfg(
            [
                "experiment=phantom_scdl",
                f"ablation={ablation}",
                f"data.num_classes={C}",
                "model.base_filters=4",
                "scdl.token_grid=4",
            ],
            output_dir=tmp_path,
        )
        torch.manual_seed(0)
        plugin = build_module(cfg).plugin
        feats = torch.randn(3, plugin.scdl.x_dim, 16, 16, 16)
        labels = torch.randint(0, C, (2, 16, 16, 16))
        plugin.train()
        plugin.training_step_index = 0
        torch.manual_seed(1)
        at_0 = plugin.training_terms(feats, labels)
        plugin.training_step_index = 1000
        torch.manual_seed(1)
        out[ablation] = (at_0, plugin.training_terms(feats, labels))
    full0, full_late = out["full"]
    plus0, plus_late = out["plus"]
    assert abs(full_late.kl_loss.item()) < 1e-6 and plus_late.kl_loss.item() > 1e-3
    torch.testing.assert_close(full0.aux_loss, full_late.aux_loss)  # released: no ramp
    torch.testing.assert_close(plus0.aux_loss, plus_late.aux_loss * math.exp(-5.0))
