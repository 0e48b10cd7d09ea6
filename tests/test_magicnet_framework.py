"""GA-MagicNet as a framework: the loop's parts on a tiny batch, and tiny end-to-end fits."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg, semi_batch, tiny_train_overrides


def _overrides(cache, tmp_path):
    return [*tiny_train_overrides(cache, tmp_path), "data.module.patch_size=[48,48,48]"]


def _module(cache, tmp_path, *extra):
    from scdl.build import build_module, setup_data

    cfg = compose_cfg(
        ["experiment=phantom_magicnet_scdl", *_overrides(cache, tmp_path), *extra],
        output_dir=tmp_path / "m",
    )
    setup_data(cfg)
    torch.manual_seed(0)
    m = build_module(cfg).train()
    m.log_dict = lambda *a, **k: None  # no trainer attached
    m.log = lambda *a, **k: None
    return m


def _batch(c=14):
    return semi_batch(c, 48, seed=0)


@pytest.mark.parametrize("mix_pl_from", ["labeled", "unlabeled"])
def test_blended_pseudo_labels_and_every_part_gets_a_gradient(phantom_cache, tmp_path, mix_pl_from):
    m = _module(
        phantom_cache, tmp_path, "framework.blend_start=0", f"framework.mix_pl_from={mix_pl_from}"
    )
    m.class_weights.counts.fill_(1.0)  # a histogram exists: blending is active
    loss = m.training_step(_batch(), 0)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []  # student (incl. the location head) and SCDL all train
    assert all(p.grad is None for p in m.teacher.parameters())
    # iteration 0 refreshes the histogram with this step's pseudo-labels (2 unlabeled patches)
    assert m.class_weights.counts.sum() == 2 * 48**3


def test_prior5_bottleneck_variant_trains_its_projection(phantom_cache, tmp_path):
    m = _module(phantom_cache, tmp_path, "scdl=amos")
    m.training_step(_batch(), 0).backward()
    assert m.plugin.prior_to_bottleneck.weight.grad.abs().sum() > 0
    m.eval()
    x = torch.randn(1, 1, 48, 48, 48)
    torch.testing.assert_close(m.segment(x), m.student(x))  # AMOS inference is prior-free


def test_patch_not_divisible_into_cubes_names_the_key(phantom_cache, tmp_path):
    m = _module(phantom_cache, tmp_path)
    batch = _batch()
    for part in batch.values():
        part["image"] = part["image"][..., :40]
    batch["labeled"]["label"] = batch["labeled"]["label"][..., :40]
    with pytest.raises(ValueError, match="data.module.patch_size"):
        m.training_step(batch, 0)


@pytest.mark.parametrize("experiment", ["phantom_magicnet", "phantom_magicnet_scdl"])
def test_tiny_magicnet_fit_and_test(phantom_cache, tmp_path, experiment):
    from scdl.training import train

    cfg = compose_cfg(
        [f"experiment={experiment}", *_overrides(phantom_cache, tmp_path), "trainer.max_steps=2"],
        output_dir=tmp_path / experiment,
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0 and "train/loss_loc" in metrics


def test_blending_starts_where_the_reference_starts(phantom_cache, tmp_path):
    """MagicNet's train_main_btcv.py blends when ``iter_num > 100`` with ``iter_num`` the finished
    iterations: the 102nd step (global_step 101) is the first blended one (was 100)."""
    m = _module(phantom_cache, tmp_path)
    assert not m.blends_at(100) and m.blends_at(101)
