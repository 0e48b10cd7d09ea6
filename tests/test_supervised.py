"""framework=supervised: the supervised-only lower bound at the same labels (labeled patches only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import compose_cfg, semi_batch, tiny_train_overrides
from scdl.frameworks.supervised import SupervisedModule
from scdl.models.vnet import VNet

C = 3


class CE(torch.nn.Module):
    def forward(self, logits, target):
        return F.cross_entropy(logits.float(), target)


def _module() -> SupervisedModule:
    torch.manual_seed(0)
    m = SupervisedModule(VNet(num_classes=C, base_filters=4), CE(), num_classes=C)
    m.log_dict = lambda *a, **k: None
    m.log = lambda *a, **k: None
    return m


def test_the_loss_is_the_supervised_loss_of_the_labeled_patches_only():
    m = _module()
    batch = semi_batch(C, 16, seed=3)
    loss = m.training_step(batch, 0)
    loss.backward()
    grads = [p.grad.clone() for p in m.net.parameters()]
    m.zero_grad()
    expected = F.cross_entropy(m.net(batch["labeled"]["image"]), batch["labeled"]["label"])
    torch.testing.assert_close(loss, expected)
    expected.backward()
    for g, p in zip(grads, m.net.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
    assert all(g.abs().sum() > 0 for g in grads)  # every parameter learns
    # the unlabeled patches change nothing
    without = {"labeled": batch["labeled"]}
    torch.testing.assert_close(m.training_step(without, 0), loss.detach())


def test_supervised_experiments_read_no_unlabeled_patches_and_train(phantom_cache, tmp_path):
    from scdl.training import train

    overrides = ["experiment=phantom_sup_scdl", *tiny_train_overrides(phantom_cache, tmp_path)]
    cfg = compose_cfg([*overrides, "trainer.max_steps=2"], output_dir=tmp_path / "run")
    assert cfg.data.module.unlabeled_bs == 0 and cfg.method_name == "Supervised only + SCDL"
    metrics = train(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0
    for data in ("amos", "synapse"):
        cfg = compose_cfg([f"experiment={data}_sup"])
        assert cfg.framework._target_.endswith("SupervisedModule")
        assert cfg.data.module.unlabeled_bs == 0
