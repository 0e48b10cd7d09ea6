import numpy as np
import torch

from scdl.data.cache import CachedCase, load_cached_case
from scdl.data.datamodule import PatchDataset, SemiSupervisedDataModule
from scdl.data.phantom import LABEL


def _dm(cache, **kw):
    args = dict(patch_size=(32, 32, 32), iters_per_epoch=3, num_val=1, num_test=1, num_labeled=2)
    args.update(kw)
    dm = SemiSupervisedDataModule(str(cache), **args)
    dm.setup("fit")
    return dm


def test_training_batches_mix_labeled_and_unlabeled_patches(phantom_cache):
    dm = _dm(phantom_cache, labeled_bs=2, unlabeled_bs=3)
    assert dm.num_classes == 14 and dm.class_names[6] == "liver"
    assert len(dm.split.labeled) == 2 and len(dm.split.unlabeled) == 2
    batches = [b for b, _, _ in dm.train_dataloader()]
    assert len(batches) == 3  # iters_per_epoch
    for b in batches:
        assert b["labeled"]["image"].shape == (2, 1, 32, 32, 32)
        assert b["labeled"]["label"].shape == (2, 32, 32, 32)
        assert b["labeled"]["label"].dtype == torch.long
        assert b["unlabeled"]["image"].shape == (3, 1, 32, 32, 32)
        assert "label" not in b["unlabeled"]
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[:2] == (1, 1)
    assert val["image"].shape[2:] == val["label"].shape[1:]
    assert val["case_id"] == dm.split.val


def test_supervised_only_when_unlabeled_bs_is_zero(phantom_cache):
    dm = _dm(phantom_cache, unlabeled_bs=0)
    b, _, _ = next(iter(dm.train_dataloader()))
    assert set(b) == {"labeled"}


def test_patches_are_aligned_crops_of_the_case():
    # image voxel value encodes its position, label = (x + y + z) % 5: a crop reveals its corner
    x, y, z = np.meshgrid(np.arange(40), np.arange(36), np.arange(20), indexing="ij")
    image = (x * 10000 + y * 100 + z).astype(np.float32)
    label = ((x + y + z) % 5).astype(np.uint8)
    case = CachedCase("synthetic", image, label, {})
    ds = PatchDataset([case], (16, 16, 24), length=8, sampling="class_balanced", num_classes=5)
    for i in range(8):
        item = ds[i]
        img, lab = item["image"][0].numpy(), item["label"].numpy()
        assert img.shape == lab.shape == (16, 16, 24)  # z padded from 20 to 24
        valid = img[:, :, 2:22]  # symmetric padding of 2 voxels each side
        cx, cy = int(valid[0, 0, 0] // 10000), int(valid[0, 0, 0] // 100 % 100)
        np.testing.assert_array_equal(valid, image[cx : cx + 16, cy : cy + 16, :])
        np.testing.assert_array_equal(lab[:, :, 2:22], label[cx : cx + 16, cy : cy + 16, :])
        assert (lab[:, :, :2] == 0).all()


def test_class_balanced_sampling_oversamples_small_organs(phantom_cache):
    cases = [load_cached_case(phantom_cache, f"phantom_00{i}") for i in range(2)]
    adrenal = LABEL["right_adrenal_gland"]

    def hit_rate(sampling, ratios=None):
        ds = PatchDataset(
            cases, (24, 24, 24), 40, sampling=sampling, num_classes=14, class_ratios=ratios
        )
        return np.mean([(ds[i]["label"] == adrenal).any().item() for i in range(40)])

    only_adrenal = [0.0] * 14
    only_adrenal[adrenal] = 1.0
    assert hit_rate("class_balanced", only_adrenal) == 1.0
    assert hit_rate("uniform") < 0.5


def test_crop_streams_differ_between_ranks(phantom_cache, monkeypatch):
    """The rank is the dataset's (set from the trainer), whatever the environment says."""
    case = load_cached_case(phantom_cache, "phantom_000")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "0")

    def draw(rank, positions=range(5)):
        torch.manual_seed(0)
        ds = PatchDataset([case], (32, 32, 32), length=5)
        ds.rank = rank
        return torch.stack([ds[i]["image"] for i in positions])

    assert torch.equal(draw(0), draw(0))  # reproducible
    assert not torch.equal(draw(0), draw(1))  # but not shared between ranks
    # a position's patch does not depend on what was drawn before it (resume continues the stream)
    assert torch.equal(draw(0)[3:], draw(0, positions=[3, 4]))


def test_stream_sampler_resumes_mid_epoch_and_continues_the_stream():
    from scdl.data.datamodule import PatchStreamSampler

    ds = type("DS", (), {"__len__": lambda self: 8})()
    s = PatchStreamSampler(ds, start=0)
    assert list(s) == list(range(8)) and list(s) == list(range(8, 16))
    resumed = PatchStreamSampler(ds, start=3 * 2)  # 3 batches of 2 consumed in epoch 0
    assert list(resumed) == [6, 7] and list(resumed) == list(range(8, 16))
    assert len(resumed) == 8  # Lightning counts a full epoch; the loop resumes at batch 3


def test_cpu_precision_follows_native_bf16(monkeypatch):
    from scdl.utils import hardware

    hardware.native_bf16.cache_clear()
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(hardware.platform, "system", lambda: "Linux")
    choice = hardware.cpu_precision_choice()
    assert (choice.precision, choice.channels_last) == ("32-true", False)
    assert "no native bf16" in choice.reason
    hardware.native_bf16.cache_clear()
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    choice = hardware.cpu_precision_choice()
    assert (choice.precision, choice.channels_last) == ("bf16-mixed", True)
    assert "avx512_bf16" in choice.reason
    assert hardware.native_bf16_flags() == ["avx512_bf16"]
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: {"avx512f", "amx_bf16", "avx512_bf16"})
    assert hardware.native_bf16_flags() == ["amx_bf16", "avx512_bf16"]
    hardware.native_bf16.cache_clear()


def test_memory_mapped_cases_are_cut_from_the_file_not_a_copy(phantom_cache):
    """data.module.in_memory=false: the ranks of a node share the cache through the page cache,
    so the patch dataset must keep the memory map (a copy per rank is what in_memory=true is)."""
    case = load_cached_case(phantom_cache, "phantom_000", in_memory=False)
    assert isinstance(case.image, np.memmap)
    ds = PatchDataset([case], (32, 32, 32), length=2)
    item = ds.items[0]["image"]
    base = item
    while getattr(base, "base", None) is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap) and np.shares_memory(item, case.image)
    assert ds[0]["image"].shape == (1, 32, 32, 32)
