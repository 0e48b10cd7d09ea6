"""The few collective operations the losses need under DDP (no-ops in one process)."""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all DDP ranks (a new tensor; ``tensor`` itself in one process).

    Statistics that stateful loss weights learn from (class counts, Dice counts) are summed over
    the ranks before the update, so every rank updates from the global batch, as one process
    with the whole batch would; DDP's buffer broadcast would otherwise overwrite every rank's
    state with rank 0's, which saw only its own part of the batch."""
    if not is_distributed() or torch.distributed.get_world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all DDP ranks (``tensor`` itself in one process): for
    statistics already normalised per batch, whose scale must not grow with the rank count."""
    if not is_distributed() or torch.distributed.get_world_size() == 1:
        return tensor
    return all_reduce_sum(tensor) / torch.distributed.get_world_size()


def launch_is_global_zero() -> bool:
    """Whether this process will be global rank 0, known before the trainer exists (preparing
    the cache, setting checkpoints aside): from the launcher's variables, as Lightning's cluster
    environments read them. SLURM (``srun``, detected as Lightning does: not inside ``srun --pty
    bash``) sets ``SLURM_PROCID``; torchrun ``RANK``; Lightning's own launcher starts ranks > 0 with
    ``LOCAL_RANK`` > 0, and other nodes with ``NODE_RANK`` > 0."""
    import os

    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_PROCID", "0")) == 0
    if TorchElasticEnvironment.detect():
        return int(os.environ.get("RANK", "0")) == 0
    return all(int(os.environ.get(var, "0") or 0) == 0 for var in ("LOCAL_RANK", "NODE_RANK"))
