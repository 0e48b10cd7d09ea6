"""``SemiSupervisedDataModule``: labeled + unlabeled random 3D patches for training, whole volumes
for validation and test, all read from the preprocessed cache (:mod:`scdl.data.prepare`).

Training batches are dicts ``{"labeled": {"image": (Bl, 1, P, P, P), "label": (Bl, P, P, P)},
"unlabeled": {"image": (Bu, 1, P, P, P)}}`` with ``Bl = labeled_bs`` and ``Bu = unlabeled_bs``.
One training "epoch" is ``iters_per_epoch`` iterations (validation runs once per epoch), so the
paper's "validate every 500 iterations" is ``iters_per_epoch=500``.

Patch sampling uses MONAI crops: ``RandSpatialCropd`` (uniform) or ``RandCropByLabelClassesd``
(``labeled_sampling="class_balanced"``: the crop centre is a voxel of a class drawn with the given
ratios, default equal for all classes, which oversamples small organs).

The training stream is a pure function of its position: patch number ``p`` of a rank's stream is
drawn with an RNG seeded by ``(stream seed, rank, p)`` and its case by a permutation seeded by
``(stream seed, rank, p // epoch length)`` (:class:`PatchStreamSampler`). So ranks and data-loader
workers never draw the same crops, and a resumed run continues the stream where the checkpoint left
it: the data module saves the number of batches consumed and the stream seed in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from scdl.data.cache import CachedCase, load_cached_case, read_index
from scdl.data.splits import Split, is_excluded, resolve_split

Sampling = Literal["uniform", "class_balanced"]


def pad_to_min_size(
    array: np.ndarray, min_size: Sequence[int], value: float
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Pads ``array`` (X, Y, Z) symmetrically so every axis is at least ``min_size``."""
    pads = []
    for n, m in zip(array.shape, min_size, strict=True):
        total = max(int(m) - n, 0)
        pads.append((total // 2, total - total // 2))
    if any(p != (0, 0) for p in pads):
        array = np.pad(array, pads, mode="constant", constant_values=value)
    return array, pads


class PatchDataset(Dataset):
    """Random 3D patches from a list of cached cases, indexed by stream position.

    Item ``p`` (any integer >= 0) comes from case ``perm[p % length] % #cases``, with ``perm`` a
    permutation of ``range(length)`` seeded by ``(seed, rank, p // length)``, so every block of
    ``length`` positions visits the cases equally often; its crop is drawn with an RNG seeded by
    ``(seed, rank, p)``. ``seed`` None: ``torch.initial_seed()`` at the first item. ``rank`` is set
    by the data module from the trainer (the global rank), never read from environment variables:
    inside ``srun --pty bash`` every rank inherits ``SLURM_PROCID=0``.

    Args:
        cases: cached cases (labels required when ``with_label``).
        patch_size: (P, P, P) voxels.
        length: items per epoch (iterations per epoch x batch size), the permutation block.
        with_label: yield labels (labeled stream) or images only (unlabeled stream).
        sampling: ``uniform`` or ``class_balanced`` crop centres (labeled stream only).
        num_classes: classes C, for class-balanced sampling.
        class_ratios: relative sampling weight per class (C,), default all ones.
        max_indices_per_class: indices kept per class for class-balanced sampling (memory bound).
    """

    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch_size: Sequence[int],
        length: int,
        with_label: bool = True,
        sampling: Sampling = "uniform",
        num_classes: int | None = None,
        class_ratios: Sequence[float] | None = None,
        max_indices_per_class: int = 20000,
        seed: int | None = None,
    ) -> None:
        if not cases:
            raise ValueError("PatchDataset needs at least one case")
        if sampling not in ("uniform", "class_balanced"):
            raise ValueError(f"unknown sampling {sampling!r}; expected uniform|class_balanced")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.length = int(length)
        self.rank = 0  # the global rank of the process reading it (SemiSupervisedDataModule)
        self.with_label = with_label
        self.sampling = sampling if with_label else "uniform"
        self.items: list[dict] = []
        for case in cases:
            image, _ = pad_to_min_size(
                np.asarray(case.image), self.patch_size, float(case.image.min())
            )
            item: dict[str, Any] = {"image": image[None].astype(np.float32, copy=False)}
            if with_label:
                if case.label is None:
                    raise ValueError(f"case {case.case_id} has no label")
                label, _ = pad_to_min_size(np.asarray(case.label), self.patch_size, 0)
                item["label"] = label[None]
                if self.sampling == "class_balanced":
                    item["indices"] = self._class_indices(label, num_classes, max_indices_per_class)
            self.items.append(item)
        self._transform = self._build_transform(num_classes, class_ratios)
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None  # (block, permutation) cache

    @staticmethod
    def _class_indices(label: np.ndarray, num_classes: int | None, keep: int) -> list[np.ndarray]:
        if num_classes is None:
            raise ValueError("class_balanced sampling needs num_classes")
        flat = label.reshape(-1)
        out = []
        for c in range(num_classes):
            idx = np.flatnonzero(flat == c)
            if len(idx) > keep:  # evenly strided subset: deterministic and spread over the organ
                idx = idx[np.linspace(0, len(idx) - 1, keep).astype(np.int64)]
            out.append(idx)
        return out

    def _build_transform(self, num_classes: int | None, class_ratios: Sequence[float] | None):
        from monai import transforms as T

        keys = ["image", "label"] if self.with_label else ["image"]
        if self.sampling == "class_balanced":
            # num_classes is set: _class_indices refused None for this sampling
            ratios = (
                list(class_ratios)
                if class_ratios is not None
                else [1.0] * int(cast(int, num_classes))
            )
            if len(ratios) != num_classes:
                raise ValueError(
                    f"class_ratios has {len(ratios)} entries for {num_classes} classes"
                )
            return T.RandCropByLabelClassesd(
                keys,
                label_key="label",
                spatial_size=self.patch_size,
                ratios=ratios,
                num_classes=num_classes,
                num_samples=1,
                indices_key="indices",
                allow_smaller=False,
            )
        return T.RandSpatialCropd(keys, roi_size=self.patch_size, random_size=False)

    def _entropy(self, *keys: int) -> list[int]:
        if self.seed is None:
            self.seed = torch.initial_seed() % 2**32
        return [int(self.seed), int(self.rank), *keys]

    def case_index(self, position: int) -> int:
        """Which case stream position ``position`` crops."""
        block = position // self.length
        if self._perm is None or self._perm[0] != block:
            rng = np.random.default_rng(np.random.SeedSequence(self._entropy(block, 0)))
            self._perm = (block, rng.permutation(self.length))
        return int(self._perm[1][position % self.length]) % len(self.items)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        item = self.items[self.case_index(position)]
        crop_seed = np.random.SeedSequence(self._entropy(position, 1)).generate_state(1)[0]
        self._transform.set_random_state(seed=int(crop_seed))
        out = self._transform(item)
        if isinstance(out, list):  # RandCropByLabelClassesd returns num_samples crops
            out = out[0]
        sample = {"image": torch.as_tensor(np.asarray(out["image"]), dtype=torch.float32)}
        if self.with_label:
            sample["label"] = torch.as_tensor(np.asarray(out["label"])[0], dtype=torch.long)
        return sample


class PatchStreamSampler(DistributedSampler):
    """Stream positions of one rank: each epoch yields the next ``length`` positions of the
    dataset (``iters_per_epoch`` batches), starting at ``start`` (a resumed run's first epoch
    yields only its remainder).

    Every rank draws a whole epoch of its own patches (the rank is part of the patch seeds,
    :class:`PatchDataset`), so an epoch, and with it the validation cadence, is
    ``iters_per_epoch`` optimiser steps whatever the number of ranks: N ranks train the same
    recipe (steps, learning rate, ramp-ups, validation every ``iters_per_epoch`` steps) with an
    N times larger batch. A :class:`DistributedSampler` so that Lightning keeps it under DDP
    instead of wrapping it.
    """

    def __init__(self, dataset: PatchDataset, num_replicas: int = 1, rank: int = 0, start: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.per_epoch = len(dataset)
        self.start = int(start)

    def __iter__(self):
        start = self.start
        end = (start // self.per_epoch + 1) * self.per_epoch
        self.start = end
        return iter(range(start, end))

    def __len__(self) -> int:
        return self.per_epoch


class _StreamLoader(DataLoader):
    """A DataLoader that tells Lightning it is resumable (``state_dict``/``load_state_dict``): the
    position itself is saved and restored by :class:`SemiSupervisedDataModule`."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class VolumeDataset(Dataset):
    """Whole preprocessed volumes: ``{"image": (1, X, Y, Z), "label": (X, Y, Z), "case_id": str,
    "index": int}``; ``index`` (the position in ``case_ids``) keys the case's Dice row, so that
    DDP evaluation scores each case once, in this order (:class:`~scdl.metrics.PerCaseDice`)."""

    def __init__(self, cache_dir: str | Path, case_ids: Sequence[str]):
        self.cache_dir = Path(cache_dir)
        self.case_ids = list(case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict:
        case = load_cached_case(self.cache_dir, self.case_ids[index], in_memory=True)
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32))[None],
            "case_id": case.case_id,
            "index": index,
        }
        if case.label is not None:
            out["label"] = torch.from_numpy(case.label.astype(np.int64))
        return out


class SemiSupervisedDataModule(L.LightningDataModule):
    """Builds the split and the loaders from a preprocessed cache.

    Args:
        cache_dir: folder written by :func:`scdl.data.prepare.prepare_dataset`.
        patch_size: training patch (X, Y, Z).
        labeled_bs, unlabeled_bs: patches per iteration from each stream (unlabeled_bs may be 0).
        iters_per_epoch: iterations per epoch; validation runs at the end of each epoch.
        split_file: JSON split (labeled/unlabeled/val/test); if None the split is drawn with
            ``labeled_ratio`` (or ``num_labeled``), ``num_val``, ``num_test`` and ``split_seed``.
        exclude: case-id flags to drop before splitting, e.g. ``{"modality": "MRI"}``.
        labeled_sampling, class_ratios: crop-centre sampling of the labeled stream.
        num_workers: data-loader workers (0 is best on a 2-core CPU: crops from RAM are cheap).
        in_memory: load training volumes into RAM (else memory-mapped reads).
        check: refuse all-background labeled cases and byte-identical cases across split parts
            (:func:`scdl.data.checks.index_split_problems`, from the cache index).
    """

    def __init__(
        self,
        cache_dir: str,
        patch_size: Sequence[int] = (64, 64, 64),
        labeled_bs: int = 2,
        unlabeled_bs: int = 2,
        iters_per_epoch: int = 100,
        split_file: str | None = None,
        labeled_ratio: float | None = 0.2,
        num_labeled: int | None = None,
        num_val: int = 4,
        num_test: int = 6,
        split_seed: int = 0,
        exclude: dict | None = None,
        labeled_sampling: Sampling = "uniform",
        class_ratios: Sequence[float] | None = None,
        num_workers: int = 0,
        in_memory: bool = True,
        pin_memory: bool = False,
        check: bool = True,
    ) -> None:
        super().__init__()
        self.cache_dir = Path(cache_dir)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.labeled_bs = labeled_bs
        self.unlabeled_bs = unlabeled_bs
        self.iters_per_epoch = iters_per_epoch
        self.split_file = split_file
        self.labeled_ratio = labeled_ratio
        self.num_labeled = num_labeled
        self.num_val = num_val
        self.num_test = num_test
        self.split_seed = split_seed
        self.exclude = dict(exclude or {})
        self.labeled_sampling = labeled_sampling
        self.class_ratios = class_ratios
        self.num_workers = num_workers
        self.in_memory = in_memory
        self.pin_memory = pin_memory
        self.check = check
        self.split: Split | None = None
        self.class_names: list[str] = []
        self._train: tuple[PatchDataset, PatchDataset | None] | None = None
        self.stream_seed: int | None = None  # set at the first train_dataloader, saved in ckpts
        self.resume_batches = 0  # training batches already consumed (restored from a checkpoint)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prepare_split(self) -> Split:
        """Reads the cache index and builds (and validates) the split; cheap, no volume loaded."""
        index = read_index(self.cache_dir)
        self.class_names = list(index["class_names"])
        cases = [c for c in index["cases"] if not is_excluded(c, self.exclude)]
        ids = [c["case_id"] for c in cases]
        labeled_ids = [c["case_id"] for c in cases if c.get("labeled", True)]
        split = resolve_split(
            [c["case_id"] for c in index["cases"]],
            labeled_ids,
            sorted(set(ids) - set(labeled_ids)),
            split_file=self.split_file,
            labeled_ratio=self.labeled_ratio,
            num_labeled=self.num_labeled,
            num_val=self.num_val,
            num_test=self.num_test,
            seed=self.split_seed,
        )
        self.split = split.validate(ids, labeled_ids, name=str(self.split_file or "drawn split"))
        if self.check:
            from scdl.data.checks import CheckReport, index_split_problems

            found = index_split_problems(self.split, index, str(self.split_file or "drawn split"))
            CheckReport(index.get("name", "data"), found).raise_on_errors(
                f"{self.split_file or 'drawn split'} on {self.cache_dir}: ",
                "Training did not start; data.check=false skips these checks.",
            )
        return self.split

    def setup(self, stage: str | None = None) -> None:
        split = self.split if self.split is not None else self.prepare_split()
        if stage in (None, "fit") and self._train is None:
            load = lambda ids: [load_cached_case(self.cache_dir, i, self.in_memory) for i in ids]  # noqa: E731
            labeled = PatchDataset(
                load(split.labeled),
                self.patch_size,
                self.iters_per_epoch * self.labeled_bs,
                with_label=True,
                sampling=self.labeled_sampling,
                num_classes=self.num_classes,
                class_ratios=self.class_ratios,
            )
            unlabeled = None
            if self.unlabeled_bs > 0:
                if not split.unlabeled:
                    raise ValueError("unlabeled_bs > 0 but the split has no unlabeled cases")
                unlabeled = PatchDataset(
                    load(split.unlabeled),
                    self.patch_size,
                    self.iters_per_epoch * self.unlabeled_bs,
                    with_label=False,
                )
            self._train = (labeled, unlabeled)

    def _volume_loader(self, case_ids: Sequence[str]) -> DataLoader:
        """One whole volume per batch, in ``case_ids`` order; under DDP each rank gets every
        world-size-th case of PyTorch's padding :class:`DistributedSampler` (set here, so Lightning
        keeps it): every rank runs the same number of batches, at least one, and the few cases
        scored twice are dropped by the Dice metric (same ``index``)."""
        dataset = VolumeDataset(self.cache_dir, case_ids)
        trainer = self.trainer
        sampler: DistributedSampler | None = None
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(
                dataset, trainer.world_size, trainer.global_rank, shuffle=False, drop_last=False
            )
        return DataLoader(
            dataset,
            batch_size=1,
            sampler=sampler,
            generator=torch.Generator().manual_seed(0),  # leaves the global RNG alone
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _stream_loader(self, dataset: PatchDataset, batch_size: int) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        dataset.seed, dataset.rank = self.stream_seed, rank
        sampler = PatchStreamSampler(dataset, world, rank, start=self.resume_batches * batch_size)
        return _StreamLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # own generator: creating an iterator draws a base seed, which from the global RNG
            # would shift every later random number of a resumed run
            generator=torch.Generator().manual_seed(int(cast(int, self.stream_seed))),
        )

    def train_dataloader(self):
        from lightning.pytorch.utilities import CombinedLoader

        if self.stream_seed is None:  # after seed_everything: the run's seed fixes the stream
            self.stream_seed = torch.initial_seed() % 2**32
        labeled, unlabeled = self._train
        loaders = {"labeled": self._stream_loader(labeled, self.labeled_bs)}
        if unlabeled is not None:
            loaders["unlabeled"] = self._stream_loader(unlabeled, self.unlabeled_bs)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the stream seed and the training batches consumed so far."""
        trainer = self.trainer
        consumed = 0
        if trainer is not None:
            # a _ProcessedTracker, which lightning annotates as its base _ReadyCompletedTracker
            consumed = trainer.fit_loop.epoch_loop.batch_progress.total.processed  # type: ignore[attr-defined]
        return {"stream_seed": self.stream_seed, "batches_consumed": int(consumed)}

    def load_state_dict(self, state: dict) -> None:
        self.stream_seed = state.get("stream_seed", self.stream_seed)
        self.resume_batches = int(state.get("batches_consumed", 0))

    def val_dataloader(self) -> DataLoader:
        return self._volume_loader(cast(Split, self.split).val)  # setup drew the split

    def test_dataloader(self) -> DataLoader:
        return self._volume_loader(cast(Split, self.split).test)
