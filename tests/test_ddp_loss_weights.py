"""Stateful loss weights under DDP (2 gloo processes): DHC's DistDW / DiffDW and GA-MagicNet's
class-frequency histogram learn from the statistics of all ranks' batches, so every rank holds
the same state, equal to one process updating from the whole batch (each rank learnt from its own
part, and DDP's buffer broadcast then kept rank 0's)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

C = 4


def _batches(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (2, C, 6, 6, 6) and labels (2, 6, 6, 6): sample 0 for rank 0, sample 1 for rank 1,
    with different class frequencies so that the two halves disagree."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (2, 6, 6, 6), generator=g)
    labels[1][labels[1] == 3] = 1  # rank 1 never sees class 3
    logits = torch.randn(2, C, 6, 6, 6, generator=g)
    return logits, labels


def _update_all(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    from scdl.losses.dhc_weighted import DHCWeightedLoss
    from scdl.losses.magicnet import ClassFrequencyWeights

    diff = DHCWeightedLoss(C, weighting="difficulty")
    dist_w = DHCWeightedLoss(C, weighting="distribution")
    freq = ClassFrequencyWeights(C, update_every=1)
    for _ in range(2):
        diff(logits, labels)
        dist_w(logits, labels)
        freq.observe(labels, iteration=1)
    return {
        "diffdw": diff.class_weights.clone(),
        "distdw": dist_w.class_weights.clone(),
        "magicnet": freq.class_weights(),
    }


def _acisis_criteria(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Acisis's accumulated per-class criteria (3, C) after two labeled batches."""
    from scdl.frameworks.acisis import AcisisModule
    from scdl.losses.dhc import WeightedCEDiceLoss
    from scdl.models.vnet import VNet

    ce = WeightedCEDiceLoss()
    m = AcisisModule(VNet(num_classes=C, base_filters=2), ce, ce, num_classes=C)
    m.update_every = 10  # accumulate only
    for _ in range(2):
        m.observe_labeled(logits, labels)
    return m.criteria.clone()


def _rank(rank: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        logits, labels = _batches()
        out[rank] = _update_all(logits[rank : rank + 1], labels[rank : rank + 1])
        # Acisis: the same batch on both ranks, so its per-batch means are one process's
        out[rank] = {**out[rank], "acisis": _acisis_criteria(logits, labels)}
    finally:
        dist.destroy_process_group()


def test_loss_weight_statistics_are_summed_over_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(port, out), nprocs=2, join=True)
    whole = _update_all(*_batches())  # one process, the whole batch
    for name, expected in whole.items():
        assert torch.equal(out[0][name], out[1][name]), name
        assert torch.allclose(out[0][name], expected, rtol=1e-6, atol=1e-7), name
    # Acisis's criteria are per-batch means, soft-maxed later: averaged over ranks, on the scale
    # of one process (a sum would double the softmax's input with 2 ranks)
    assert torch.allclose(out[0]["acisis"], _acisis_criteria(*_batches()), rtol=1e-6)
    alone = _update_all(*(t[:1] for t in _batches()))  # rank 0's half only: what was kept
    assert not torch.allclose(alone["distdw"], whole["distdw"])
