"""CPS: cross pseudo-label exchange, inference averaging, reference (released) weight loading."""

import torch
import torch.nn.functional as F
from torch import nn

from conftest import semi_batch
from scdl.frameworks.cps import CPSModule
from scdl.losses.consistency import PseudoLabelLoss
from scdl.losses.dhc_weighted import DHCWeightedLoss
from scdl.models.reference_weights import convert_reference_vnet, reference_key_to_ours
from scdl.models.vnet import VNet

C = 3


class ZeroLoss(nn.Module):
    def forward(self, logits, target):
        return logits.sum() * 0.0


class CE(nn.Module):
    def forward(self, logits, target):
        return F.cross_entropy(logits.float(), target)


def _cps(**kw):
    torch.manual_seed(0)
    m = CPSModule(
        backbone=VNet(num_classes=C, base_filters=4, init="kaiming"),
        backbone_b=VNet(num_classes=C, base_filters=4, init="xavier"),
        sup_loss=kw.pop("sup_loss", ZeroLoss()),
        unsup_loss=PseudoLabelLoss(CE()),
        unsup_weight=1.0,
        rampup_steps=0,
        num_classes=C,
        **kw,
    )
    m.log_dict = lambda *a, **k: None
    m.log = lambda *a, **k: None
    return m


def _batch():
    return semi_batch(C, 16, seed=2)


def test_each_net_is_trained_on_the_others_detached_argmax():
    m = _cps()
    batch = _batch()
    m.training_step(batch, 0).backward()
    grads_a = [p.grad.clone() for p in m.net_a.parameters()]
    grads_b = [p.grad.clone() for p in m.net_b.parameters()]

    m.zero_grad()
    x = torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]])
    la, lb = m.net_a(x), m.net_b(x)
    target_a, target_b = lb.argmax(1).detach(), la.argmax(1).detach()
    (F.cross_entropy(la, target_a) + F.cross_entropy(lb, target_b)).backward()
    for g, p in zip(grads_a, m.net_a.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)  # A only learns from CE(A, argmax B)
    for g, p in zip(grads_b, m.net_b.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_cps_weight_ramps_and_inference_averages_logits():
    m = _cps()
    m.rampup_steps = 100
    assert m.unsup_weight_at(0) < 0.01 and m.unsup_weight_at(100) == 1.0
    m.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(m.segment(x), 0.5 * (m.net_a(x) + m.net_b(x)))
    assert not torch.allclose(m.net_a(x), m.net_b(x))  # different initialisations


def test_dhc_losses_update_their_weights_in_training():
    m = _cps(
        sup_loss=DHCWeightedLoss(C, "difficulty"), sup_loss_b=DHCWeightedLoss(C, "distribution")
    )
    w0 = m.sup_loss_b.class_weights.clone()
    m.training_step(_batch(), 0)
    assert not torch.equal(w0, m.sup_loss_b.class_weights)
    assert "sup_loss_b.weighter.weights" in m.state_dict()


def _reference_state(net: VNet) -> dict:
    """Our VNet's weights written in the reference layout (names of networks/vnet.py), with the
    DataParallel prefix."""
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    out = {}
    for key, value in net.state_dict().items():
        head, rest = key.split(".", 1)
        if head.startswith("block"):
            ref = f"block_{words[int(head[5:]) - 1]}.conv.{rest}"
        elif head.startswith("down"):
            ref = f"block_{words[int(head[4:]) - 1]}_dw.conv.{rest}"
        elif head.startswith("up"):
            ref = f"block_{words[int(head[2:]) - 1]}_up.conv.{rest}"
        else:
            ref = key
        out[f"module.{ref}"] = value.clone()
    return out


def test_reference_checkpoints_load_into_cps():
    assert reference_key_to_ours("block_three_dw.conv.1.running_mean") == "down3.1.running_mean"
    assert reference_key_to_ours("block_seven_up.conv.0.weight") == "up7.0.weight"
    assert reference_key_to_ours("block_nine.conv.0.bias") == "block9.0.bias"
    torch.manual_seed(5)
    src_a, src_b = VNet(num_classes=C, base_filters=4), VNet(num_classes=C, base_filters=4)
    m = _cps()
    m.load_reference_weights(_reference_state(src_a), {"state_dict": _reference_state(src_b)})
    m.eval(), src_a.eval(), src_b.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(m.net_a(x), src_a(x))
    torch.testing.assert_close(m.segment(x), 0.5 * (src_a(x) + src_b(x)))
    assert convert_reference_vnet(_reference_state(src_a)).keys() == src_a.state_dict().keys()
