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


def _dhc(**kw):
    """The wiring of ``loss=dhc`` (code/train_dhc.py of xmed-lab/DHC)."""
    from scdl.losses.dhc import WeightedCEDiceLoss

    m = _cps(
        sup_loss=DHCWeightedLoss(C, "difficulty"),
        sup_loss_b=DHCWeightedLoss(C, "distribution", update_on_call=False),
        **kw,
    )
    m.unsup_loss = PseudoLabelLoss(WeightedCEDiceLoss(dice_weight=0.0))
    return m


def test_dhc_weights_each_direction_with_the_student_networks_weights():
    """DHC: A's CPS term is CE weighted by A's DiffDW weights of this step, B's by B's DistDW
    weights; B's DistDW starts from the labeled set's counts and then follows only B's
    pseudo-labels of the unlabeled batch (EMA 0.99), never the labeled targets."""
    from scdl.losses.dhc import DistDW

    m = _dhc()
    labeled_counts = torch.tensor([900.0, 80.0, 20.0])
    m.sup_loss_b.init_from_counts(labeled_counts)
    assert not m.sup_loss_b.wants_labeled_counts  # init once (a checkpoint keeps its own)
    reference = DistDW(C)
    expected_b = reference.init_weights(labeled_counts)
    torch.testing.assert_close(m.sup_loss_b.class_weights, expected_b)

    seen = []
    forward = m.unsup_loss.forward
    m.unsup_loss.forward = lambda s, t, class_weights=None: (
        seen.append(class_weights) or forward(s, t, class_weights=class_weights)
    )
    batch = _batch()
    m.training_step(batch, 0)
    x = torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]])
    with torch.no_grad():  # B on the joint batch, as in the step (train-mode BatchNorm)
        pseudo_b = m.net_b(x)[batch["labeled"]["image"].shape[0] :].argmax(1)
    expected_b = reference.update(pseudo_b)  # EMA from the init, labeled targets not counted
    torch.testing.assert_close(m.sup_loss_b.class_weights, expected_b)
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], m.sup_loss.class_weights)  # A's, updated this step
    torch.testing.assert_close(seen[1], expected_b)
    assert not torch.equal(seen[0], torch.full((C,), float(C)))  # DiffDW moved off its init


def test_dhc_distribution_weights_start_from_the_labeled_cache(phantom_cache):
    """``on_fit_start`` initialises B's DistDW from the voxel counts of the labeled cases (DHC's
    ``DistDW.init_weights(labeled_dataset)``), once."""
    from types import SimpleNamespace

    import numpy as np

    from scdl.losses.dhc import DistDW

    ids = sorted(p.name[: -len("_label.npy")] for p in phantom_cache.glob("*_label.npy"))[:2]
    num_classes = 14
    m = CPSModule(
        backbone=VNet(num_classes=num_classes, base_filters=4),
        backbone_b=VNet(num_classes=num_classes, base_filters=4),
        sup_loss=DHCWeightedLoss(num_classes, "difficulty"),
        sup_loss_b=DHCWeightedLoss(num_classes, "distribution", update_on_call=False),
        unsup_loss=PseudoLabelLoss(CE()),
        num_classes=num_classes,
    )
    datamodule = SimpleNamespace(split=SimpleNamespace(labeled=ids), cache_dir=phantom_cache)
    m.trainer = SimpleNamespace(datamodule=datamodule)
    m.on_fit_start()
    counts = sum(np.bincount(np.load(phantom_cache / f"{i}_label.npy").ravel(), minlength=14)
                 for i in ids)  # fmt: skip
    expected = DistDW(num_classes).init_weights(torch.as_tensor(counts, dtype=torch.float64))
    torch.testing.assert_close(m.sup_loss_b.class_weights, expected)
    m.sup_loss_b.weighter.weights.fill_(1.0)
    m.on_fit_start()  # initialised: left alone
    assert torch.equal(m.sup_loss_b.class_weights, torch.ones(num_classes))


def test_plain_cps_uses_dhc_train_cps_losses():
    """loss=cps (DHC's code/train_cps.py defaults): supervised CE + foreground batch soft Dice
    (smooth 1), cross pseudo-labels with plain CE of the other network's argmax, weight 1."""
    from hydra.utils import instantiate

    from conftest import compose_cfg

    cfg = compose_cfg(["experiment=phantom_cps_plain", "data.num_classes=3"])
    assert cfg.framework.unsup_weight == 1.0 and cfg.method_name == "CPS"
    sup, unsup = instantiate(cfg.loss.sup), instantiate(cfg.loss.unsup)
    g = torch.Generator().manual_seed(4)
    student, other = (
        torch.randn(2, C, 4, 4, 4, generator=g),
        torch.randn(2, C, 4, 4, 4, generator=g),
    )
    y = torch.randint(0, C, (2, 4, 4, 4), generator=g)
    torch.testing.assert_close(unsup(student, other), F.cross_entropy(student, other.argmax(1)))
    p = student.softmax(1)
    onehot = F.one_hot(y, C).movedim(-1, 1).float()
    tp, denom = (p * onehot).sum((0, 2, 3, 4)), (p + onehot).sum((0, 2, 3, 4))
    dice = (2 * tp + 1) / (denom + 1 + 1e-8)
    expected = F.cross_entropy(student, y) + (1 - dice[1:]).mean()
    torch.testing.assert_close(sup(student, y), expected)
