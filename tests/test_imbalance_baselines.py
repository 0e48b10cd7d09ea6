"""The class-imbalanced SSL baselines of DHC's benchmark (docs/method.md §4.4c): CReST, SimiS and
CLD class weights, CLD's confidence sampling, DePL's debiased pseudo-labels, Adsh's adaptive
thresholds, DST's decoupled decoders, Acisis's fuzzy-rank sampling and URPC's pyramid consistency,
each on a case computed by hand from the reference scripts' formulas (xmed-lab/DHC
code/train_{urpc,crest,simis,dst,cld,depl,adsh,acisis}.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import compose_cfg, semi_batch
from scdl.frameworks.adsh import AdshModule, adaptive_thresholds, class_masked_ce
from scdl.frameworks.cld import CLDModule
from scdl.frameworks.cps import CPSModule
from scdl.frameworks.depl import DePLModule
from scdl.losses.class_weights import CountWeightedLoss, cld_weights, crest_weights, simis_weights
from scdl.losses.consistency import PseudoLabelLoss, voxel_weighted_ce
from scdl.losses.dhc import WeightedCEDiceLoss
from scdl.models.vnet import VNet

C = 3
COUNTS = torch.tensor([100.0, 10.0, 1.0])


# --- class weights ---------------------------------------------------------------------------
def test_crest_weights_reverse_the_ranks_of_the_cube_root_frequencies():
    mu = [1.0, 0.1 ** (1 / 3), 0.01 ** (1 / 3)]  # (n / max n)^(1/3), classes already ranked
    torch.testing.assert_close(crest_weights(COUNTS), torch.tensor(mu[::-1], dtype=torch.float64))
    # unranked input: class 2 most frequent, class 0 rarest
    w = crest_weights(torch.tensor([1.0, 10.0, 100.0]))
    torch.testing.assert_close(w, torch.tensor(mu, dtype=torch.float64))


def test_simis_and_cld_weights():
    p = np.array([100, 10, 1]) / 111
    torch.testing.assert_close(simis_weights(COUNTS), torch.tensor(3 * (p.max() - p)))
    expected = torch.tensor([1.0, 10 ** (1 / 3), 100 ** (1 / 3)], dtype=torch.float64)
    torch.testing.assert_close(cld_weights(COUNTS), expected)
    # a class absent from the labeled set: 1 voxel (finite), not the reference's inf
    assert math.isclose(float(cld_weights(torch.tensor([100.0, 0.0]))[1]), 100 ** (1 / 3))


def test_count_weighted_loss_init_and_ema():
    simis = CountWeightedLoss(C, "simis", momentum=0.99)
    simis.init_from_counts(COUNTS)  # the reference's EMA(w, C * ones)
    torch.testing.assert_close(simis.weights, (0.99 * 3 + 0.01 * simis_weights(COUNTS)).float())
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    before = simis.weights.clone()
    simis.observe(labels)
    now = simis_weights(torch.tensor([2.0, 1.0, 3.0])).float()
    torch.testing.assert_close(simis.weights, 0.99 * before + 0.01 * now)

    crest = CountWeightedLoss(C, "crest")
    assert crest.wants_labeled_counts
    crest.observe(labels)  # before any init: set, no EMA
    torch.testing.assert_close(crest.weights, crest_weights(torch.tensor([2.0, 1.0, 3.0])).float())
    assert not crest.wants_labeled_counts

    cld = CountWeightedLoss(C, "cld")
    with pytest.raises(ValueError, match="loss=cld: the class weights come from the labeled set"):
        cld.observe(labels)  # no labeled counts: refused, not fixed from pseudo-labels
    cld.init_from_counts(COUNTS)
    cld.observe(labels)  # fixed
    torch.testing.assert_close(cld.weights, cld_weights(COUNTS).float())
    # the loss is DHC's DC_and_CE_loss(w_dc=w, w_ce=w)
    g = torch.Generator().manual_seed(0)
    logits, y = (
        torch.randn(2, C, 4, 4, 4, generator=g),
        torch.randint(0, C, (2, 4, 4, 4), generator=g),
    )
    torch.testing.assert_close(cld(logits, y), WeightedCEDiceLoss()(logits, y, cld.weights))


def _cps(cls=CPSModule, size=8, **kw):
    torch.manual_seed(0)
    m = cls(
        backbone=VNet(num_classes=C, base_filters=4, init="kaiming"),
        backbone_b=VNet(num_classes=C, base_filters=4, init="xavier"),
        sup_loss=kw.pop("sup_loss", WeightedCEDiceLoss()),
        sup_loss_b=kw.pop("sup_loss_b", None),
        unsup_loss=PseudoLabelLoss(WeightedCEDiceLoss(dice_weight=0.0)),
        unsup_weight=1.0,
        rampup_steps=0,
        num_classes=C,
        **kw,
    )
    m.log_dict = lambda *a, **k: None
    m.log = lambda *a, **k: None
    return m


@pytest.mark.parametrize("observes", ["unlabeled", "all"])
def test_cps_hands_each_network_its_own_pseudo_labels(observes):
    """CReST observes its network's argmax of the unlabeled samples, SimiS of the whole batch; B
    has its own weights; the cross pseudo-label CE of each direction uses the student's weights."""
    loss_a = CountWeightedLoss(C, "crest", observes=observes)
    loss_b = CountWeightedLoss(C, "crest", observes=observes)
    m = _cps(sup_loss=loss_a, sup_loss_b=loss_b)
    g = torch.Generator().manual_seed(1)
    la, lb = torch.randn(4, C, 4, 4, 4, generator=g), torch.randn(4, C, 4, 4, 4, generator=g)
    m.observe_pseudo_labels(la, lb, 2, True)
    part = slice(0, 4) if observes == "all" else slice(2, 4)
    for loss, logits in ((loss_a, la), (loss_b, lb)):
        counts = torch.bincount(logits[part].argmax(1).reshape(-1), minlength=C).double()
        torch.testing.assert_close(loss.weights, crest_weights(counts).float())
    expected = F.cross_entropy(la, lb.argmax(1), weight=loss_a.weights) + F.cross_entropy(
        lb, la.argmax(1), weight=loss_b.weights
    )
    torch.testing.assert_close(m.cps_term(la, lb, 0, 2, torch.zeros(2, 4, 4, 4)), expected)


def test_voxel_weighted_ce_is_the_mean_over_all_voxels():
    g = torch.Generator().manual_seed(2)
    logits, y = (
        torch.randn(2, C, 3, 3, 3, generator=g),
        torch.randint(0, C, (2, 3, 3, 3), generator=g),
    )
    mask = (torch.rand(2, 3, 3, 3, generator=g) > 0.5).float()
    w = torch.tensor([0.5, 1.0, 2.0])
    logp = logits.log_softmax(1).gather(1, y[:, None])[:, 0]
    expected = (-logp * w[y] * mask).sum() / mask.numel()  # masked voxels count in the mean
    torch.testing.assert_close(voxel_weighted_ce(logits, y, mask, w), expected)


# --- CLD ---------------------------------------------------------------------------------------
def test_cld_confidence_bank_sampling_rate_and_masked_loss():
    m = _cps(CLDModule, bank_every=2, bank_momentum=0.9, gamma=0.5)
    assert torch.equal(m.conf_a, m.conf_b)  # B starts as a copy of A's random bank
    y = torch.tensor([0, 0, 1, 2]).view(1, 4, 1, 1)
    logits = torch.zeros(1, C, 4, 1, 1)
    logits[0, 0] = 2.0  # class 0 scores e^2 / (e^2 + 2) everywhere
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = 1 / (math.exp(2) + 2)
    m.record_confidence([logits, logits], y)  # 1 of 2: no update yet
    m.record_confidence([logits, logits], y)
    torch.testing.assert_close(m.conf_a, torch.tensor([p0, p1, p1]))  # first update: set
    m.record_confidence([logits, logits], y)
    m.record_confidence([logits * 0, logits * 0], y)
    new = torch.tensor([(p0 + 1 / 3) / 2, (p1 + 1 / 3) / 2, (p1 + 1 / 3) / 2])
    torch.testing.assert_close(m.conf_b, 0.9 * torch.tensor([p0, p1, p1]) + 0.1 * new)
    # sampling rate ((1 - conf) / max(1 - conf)) ** 0.5; a class of confidence 1 is never kept
    conf = torch.tensor([1.0, 0.0, 0.75])
    torch.testing.assert_close(m.sampling_rate(conf), torch.tensor([0.0, 1.0, 0.5]))
    pred = torch.zeros(1, C, 2, 1, 1)
    pred[0, 0, 0], pred[0, 1, 1] = 5.0, 5.0  # voxel 0 predicts class 0, voxel 1 class 1
    assert m.sample_map(pred, conf).tolist() == [[[[0.0]], [[1.0]]]]
    # the term: w_y CE(A, argmax B) on A's own sample map, the reverse on B's
    m.conf_a.copy_(conf)
    m.conf_b.copy_(torch.tensor([0.0, 1.0, 0.75]))  # B keeps class 0, drops class 1
    m.sup_loss = CountWeightedLoss(C, "cld")
    m.sup_loss.init_from_counts(COUNTS)
    m.sup_loss_b = m.sup_loss
    m.bank_every = 10**6  # leave the banks alone
    a, b = pred.clone(), pred.flip(2)  # B predicts class 1 at voxel 0 and class 0 at voxel 1
    w = m.sup_loss.weights
    ce_a = F.cross_entropy(a, b.argmax(1), weight=w, reduction="none")[0, :, 0, 0]
    ce_b = F.cross_entropy(b, a.argmax(1), weight=w, reduction="none")[0, :, 0, 0]
    expected = ce_a[1] / 2 + ce_b[1] / 2  # A keeps voxel 1 (class 1), B keeps voxel 1 (class 0)
    term = m.cps_term(a, b, 0, 1, torch.zeros(1, 2, 1, 1, dtype=torch.long))
    torch.testing.assert_close(term, expected)


# --- DePL --------------------------------------------------------------------------------------
def test_depl_debiases_masks_then_updates_qhat():
    m = _cps(DePLModule, patch_size=(2, 1, 1), tau=1.0, threshold=0.9, qhat_momentum=0.5)
    m.qhat[1, 0, :, 0] = torch.tensor([0.98, 0.01, 0.01]).view(C, 1, 1)  # B's bias towards 0
    a = torch.zeros(2, C, 2, 1, 1)  # sample 0 labeled, sample 1 unlabeled
    a[:, 2] = 4.0  # A: class 2 everywhere
    b = torch.zeros(2, C, 2, 1, 1)
    b[:, 0, 0] = 4.0  # B: class 0 at voxel 0, but its bias makes that class 1 / 2 after debiasing
    b[:, 1, 1] = 6.0  # class 1 at voxel 1
    qhat_b = m.qhat[1].clone()
    p_b = (b - torch.log(qhat_b)).softmax(1)
    conf_b, t_b = p_b.max(1)
    p_a = (a - math.log(1 / 3)).softmax(1)
    conf_a, t_a = p_a.max(1)
    assert (t_b[:, 0] != 0).all()  # the debiasing moved B's pseudo-label off the biased class
    term = m.cps_term(a, b, 0, 1, torch.zeros(1, 2, 1, 1, dtype=torch.long))
    expected = (F.cross_entropy(a, t_b, reduction="none") * (conf_b >= 0.9)).mean() + (
        F.cross_entropy(b, t_a, reduction="none") * (conf_a >= 0.9)
    ).mean()
    torch.testing.assert_close(term, expected)
    # qhat: EMA of the unlabeled samples' softmax, after the pseudo-labels used the old one
    torch.testing.assert_close(m.qhat[1], 0.5 * qhat_b + 0.5 * b[1:].softmax(1))
    torch.testing.assert_close(m.qhat[0], 0.5 / 3 + 0.5 * a[1:].softmax(1))


def test_per_voxel_state_of_another_patch_size_is_refused_by_name():
    m = _cps(DePLModule, patch_size=(2, 2, 2))
    logits = torch.zeros(2, C, 4, 4, 4)
    with pytest.raises(ValueError, match="framework.patch_size"):
        m.cps_term(logits, logits, 0, 1, torch.zeros(1, 4, 4, 4, dtype=torch.long))
    m = _cps(AdshModule, patch_size=(2, 2, 2))
    with pytest.raises(ValueError, match="Adsh's window"):
        m.cps_term(logits, logits, 0, 1, torch.zeros(1, 4, 4, 4, dtype=torch.long))


# --- Adsh --------------------------------------------------------------------------------------
def _thresholds_by_sorting(scores: np.ndarray, thresh_major: float) -> np.ndarray:
    """The reference's estimate, written from its description with numpy's sort."""
    c = scores.shape[1]
    flat = np.concatenate([s.reshape(c, -1) for s in scores], axis=1)
    voxel_num = np.bincount(flat.argmax(0), minlength=c).astype(np.float32)
    major = int(voxel_num.argmax())
    rho = np.float32((flat[major] > thresh_major).sum() + 1e-8) / np.float32(
        voxel_num[major] + 1e-8
    )
    out = np.zeros(c, dtype=np.float32)
    for i in range(c):
        ranked = np.sort(flat[i])[::-1]
        out[i] = ranked[min(int(rho * voxel_num[i]), flat.shape[1] - 1)]
    return out


def test_adsh_thresholds_keep_each_class_the_majority_fraction():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, C, 4, 4, 4, generator=g) * 3
    logits[:, 0] += 2.0  # class 0 is the majority
    scores = logits.softmax(1)
    expected = _thresholds_by_sorting(scores.numpy(), 0.9)
    torch.testing.assert_close(adaptive_thresholds(scores, 0.9), torch.from_numpy(expected))
    # one class everywhere: the index past the end takes the smallest score (the reference fails)
    one = torch.zeros(1, C, 2, 2, 2)
    one[:, 0] = 1.0
    assert adaptive_thresholds(one, 0.9)[0] == 1.0


def test_adsh_window_fills_then_thresholds_then_masked_ce():
    m = _cps(AdshModule, patch_size=(2, 2, 2), window_samples=4, thresh_major=0.9)
    g = torch.Generator().manual_seed(4)
    seen = []
    for step in range(3):  # Bu = 2: stored at fill 0 and 2, estimated at fill 4 (>= 4 - 1)
        u = torch.randn(2, C, 2, 2, 2, generator=g)
        m.update_thresholds(0, u)
        if step < 2:
            seen.append(u.softmax(1))
            assert torch.equal(m.thresholds[0], torch.zeros(C))
    window = torch.cat(seen)
    torch.testing.assert_close(m.thresholds[0], adaptive_thresholds(window, 0.9))
    assert int(m.window_fill[0]) == 0
    t = torch.tensor([0.2, 0.9, 0.0])
    logits = torch.randn(2, C, 2, 2, 2, generator=g, requires_grad=True)
    target = torch.randint(0, C, (2, 2, 2, 2), generator=g)
    provider = torch.randn(2, C, 2, 2, 2, generator=g)
    keep = (provider.softmax(1) > t.view(1, C, 1, 1, 1)).float()
    torch.testing.assert_close(
        class_masked_ce(logits, target, provider, t), F.cross_entropy(logits * keep, target)
    )


def test_adsh_each_network_is_masked_by_the_pseudo_label_provider():
    """DHC's train_adsh.py: cps_loss_func(output_A, max_B, sample_map_B) + (B, max_A,
    sample_map_A): A's logits are sampled where B's scores pass B's thresholds (not A's own)."""
    m = _cps(AdshModule, patch_size=(2, 2, 2), window_samples=4)
    m.thresholds.copy_(torch.tensor([[0.9, 0.9, 0.9], [0.1, 0.1, 0.1]]))  # A strict, B lenient
    g = torch.Generator().manual_seed(8)
    a = torch.randn(2, C, 2, 2, 2, generator=g) * 2
    b = torch.randn(2, C, 2, 2, 2, generator=g) * 2
    y = torch.zeros(2, 2, 2, 2, dtype=torch.long)
    got = m.cps_term(a, b, 0, 2, y)  # n_l = batch: no unlabeled patch, the thresholds stay

    def term(student, provider, t):
        keep = (provider.softmax(1) > t.view(1, C, 1, 1, 1)).float()
        return F.cross_entropy(student * keep, provider.argmax(1))

    expected = term(a, b, m.thresholds[1]) + term(b, a, m.thresholds[0])
    torch.testing.assert_close(got, expected)
    own_mask_a = (a.softmax(1) > 0.9).float()  # the student's own scores and thresholds
    own_mask_b = (b.softmax(1) > 0.1).float()
    own = F.cross_entropy(a * own_mask_a, b.argmax(1)) + F.cross_entropy(
        b * own_mask_b, a.argmax(1)
    )
    assert not torch.allclose(got, own)  # which network masks matters on this case


# --- every baseline trains ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (CLDModule, {}),
        (DePLModule, {"patch_size": (16, 16, 16)}),
        (AdshModule, {"patch_size": (16, 16, 16), "window_samples": 2}),
    ],
)
def test_every_parameter_of_both_networks_learns(cls, kw):
    m = _cps(cls, **kw)
    batch = semi_batch(C, 16, seed=5)
    for step in range(2):  # Adsh: the second step uses estimated thresholds
        m.zero_grad()
        loss = m.training_step(batch, step)
        loss.backward()
        assert torch.isfinite(loss)
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("method", ["crest", "simis", "cld", "depl", "adsh"])
def test_experiments_compose_with_the_reference_defaults(method):
    expected = {  # (cps_w, ramped over the run): each script's -w, DHC's launcher's -r
        "crest": (0.1, True),
        "simis": (0.1, True),
        "cld": (1.0, True),
        "depl": (1.0, True),
        "adsh": (0.1, True),
    }[method]
    for data in ("phantom", "amos", "synapse"):
        cfg = compose_cfg([f"experiment={data}_{method}_scdl"])
        assert cfg.framework.unsup_weight == expected[0]
        assert (cfg.framework.rampup_steps == cfg.trainer.max_steps) == expected[1]
        assert (cfg.framework.rampup_steps == 0) == (not expected[1])
        assert cfg.method_name.endswith(" + SCDL") and cfg.scdl is not None


# --- Acisis ------------------------------------------------------------------------------------
def _acisis(**kw):
    from scdl.frameworks.acisis import AcisisModule

    torch.manual_seed(0)
    m = AcisisModule(
        VNet(num_classes=C, base_filters=4),
        WeightedCEDiceLoss(),
        PseudoLabelLoss(WeightedCEDiceLoss(dice_weight=0.0)),
        num_classes=C,
        teacher_noise=0.0,
        unsup_weight=1.0,
        rampup_steps=0,
        **kw,
    )
    m.log_dict = lambda *a, **k: None
    m.log = lambda *a, **k: None
    return m


def test_acisis_criteria_pair_every_sample_with_every_label_map_as_the_reference():
    """The reference's sum(p_c[:, None] * log p * (gt == c)[:, None]) with gt (Bl, 1, ...): written
    out here with explicit loops over the two sample indices."""
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, C, 2, 2, 1, generator=g)
    labels = torch.randint(0, C, (2, 2, 2, 1), generator=g)
    p = logits.softmax(1)
    log_sum = torch.log(p + 1e-12).sum(1)
    margin = p.max(1).values
    for cross in (True, False):
        got = _acisis(cross_sample_statistics=cross).labeled_criteria(logits, labels)
        for c in range(C):
            n = (labels == c).sum() + 1e-12
            pairs = [(i, j) for i in range(2) for j in range(2) if cross or i == j]
            ent = sum((p[j, c] * log_sum[j] * (labels[i] == c)).sum() for i, j in pairs)
            conf = sum((p[j, c] * (labels[i] == c)).sum() for i, j in pairs)
            marg = sum(((margin[j] - p[j, c]) * (labels[i] == c)).sum() for i, j in pairs)
            torch.testing.assert_close(got[:, c], torch.stack([ent, conf, marg]) / n)


def test_acisis_sampling_rate_by_fuzzy_rank_fusion():
    from scdl.frameworks.acisis import PENALTY_RANK, fuzzy_ranks

    m = _acisis(update_every=2, top_m=2, rate_momentum=0.5, rate_power=2.5)
    crit = torch.tensor([[-3.0, -1.0, -2.0], [0.9, 0.2, 0.5], [0.0, 0.6, 0.3]], dtype=torch.float64)
    m.criteria.copy_(2 * crit)
    m.criteria_steps.fill_(2)
    m.update_sampling_rate()
    # by hand: softmax over classes of the averaged criteria, Gompertz ranks, top 2 of 3 kept
    r = torch.softmax(crit, dim=1).numpy()
    k = 1 - np.exp(-np.exp(-2 * r))
    kept = k <= np.sort(k, axis=1)[:, 1:2]  # the 2 smallest of each row
    ranks = np.where(kept, k, PENALTY_RANK)
    np.testing.assert_allclose(fuzzy_ranks(r, 2), ranks)
    cfs = 1 - np.where(kept, r, 0.0).sum(0) / 3
    cc = cfs * ranks.sum(0)
    cc = 0.5 * (cc / cc.max())  # EMA from 0 with momentum 0.5
    rate = ((1 - cc) / (1 - cc).max()) ** 2.5
    torch.testing.assert_close(m.sampling_rate, torch.tensor(rate, dtype=torch.float32))
    assert int(m.criteria_steps) == 0 and not m.criteria.any()


def test_acisis_loss_is_confidence_weighted_ce_on_sampled_voxels():
    m = _acisis()
    m.sampling_rate.copy_(torch.tensor([0.0, 1.0, 1.0]))  # class 0 never kept, the others always
    student = torch.zeros(1, C, 2, 1, 1)
    student[0, 0, 0], student[0, 1, 1] = 3.0, 3.0  # voxel 0 -> class 0, voxel 1 -> class 1
    teacher = torch.zeros(1, C, 2, 1, 1)
    teacher[0, 2] = 5.0  # the teacher says class 2
    m.teacher_logits = lambda x: teacher
    p = student.softmax(1)
    ce = F.cross_entropy(student, teacher.argmax(1), reduction="none")[0, :, 0, 0]
    expected = ce[1] * p[0, 1, 1, 0, 0] ** 1.5 / 2
    torch.testing.assert_close(m.consistency(student, torch.zeros(1, 1, 2, 1, 1)), expected)


def test_acisis_trains_every_student_parameter():
    m = _acisis(update_every=1)
    batch = semi_batch(C, 16, seed=7)
    loss = m.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and not torch.equal(m.sampling_rate, torch.ones(C))
    for name, p in m.student.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    cfg = compose_cfg(["experiment=amos_acisis_scdl"])
    assert cfg.framework.teacher_noise == 0.0 and cfg.framework.unsup_weight == 1.0
    assert (
        cfg.framework.rampup_steps == cfg.trainer.max_steps and cfg.framework.update_every is None
    )


def _attach_split(module, unlabeled_cases: int, unlabeled_bs: int = 2) -> None:
    """A trainer stub whose data module holds a split of ``unlabeled_cases`` unlabeled cases."""
    from types import SimpleNamespace

    split = SimpleNamespace(labeled=[], unlabeled=[f"u{i}" for i in range(unlabeled_cases)])
    datamodule = SimpleNamespace(split=split, unlabeled_bs=unlabeled_bs)
    module._trainer = SimpleNamespace(datamodule=datamodule)


@pytest.mark.parametrize(("cases", "window", "epoch"), [(16, 4, 8), (206, 51, 103), (3, 1, 2)])
def test_adsh_window_and_acisis_epoch_follow_the_split(cases, window, epoch):
    """DHC: Adsh's tot_iter = u_len // 4, Acisis's update_iter = len(unlabeled_loader) (no
    drop_last): derived from the run's split when training starts, for any labeled fraction
    (AMOS 2 % / 10 %: 53 / 48 windows); an explicit value is kept."""
    adsh = _cps(AdshModule, patch_size=(2, 2, 2))
    _attach_split(adsh, cases)
    adsh.on_fit_start()
    assert adsh.window_samples == window and adsh.window.shape[:2] == (2, window)
    acisis = _acisis()
    _attach_split(acisis, cases)
    acisis.on_fit_start()
    assert acisis.update_every == epoch
    fixed = _cps(AdshModule, patch_size=(2, 2, 2), window_samples=7)
    _attach_split(fixed, cases)
    fixed.on_fit_start()
    assert fixed.window_samples == 7


def test_split_derived_sizes_refuse_a_data_module_without_a_split():
    from types import SimpleNamespace

    m = _cps(AdshModule, patch_size=(2, 2, 2))
    m._trainer = SimpleNamespace(datamodule=SimpleNamespace(unlabeled_bs=2))
    with pytest.raises(ValueError, match=r"framework.window_samples=null .* no split: set"):
        m.on_fit_start()


# --- DST ---------------------------------------------------------------------------------------
def test_dst_worst_case_loss_and_reversal_schedule():
    from scdl.frameworks.dst import reverse_gradient, warm_start_coeff, worst_case_loss

    assert warm_start_coeff(0) == 0.0
    assert math.isclose(warm_start_coeff(500), 2 * 0.1 / (1 + math.exp(-1)) - 0.1)
    assert warm_start_coeff(10**6) == pytest.approx(0.1)
    x = torch.ones(3, requires_grad=True)
    (reverse_gradient(x, 0.25) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.25, -0.5, -0.75]))
    g = torch.Generator().manual_seed(8)
    main_l, worst_l, main_u, worst_u = (torch.randn(1, C, 2, 2, 1, generator=g) for _ in range(4))
    p_u = worst_u.softmax(1)
    away = torch.log(torch.clamp(1 - p_u + 1e-6, max=1.0))
    t_u = main_u.argmax(1)
    expected = 2 * F.cross_entropy(worst_l, main_l.argmax(1)) - away.gather(1, t_u[:, None]).mean()
    torch.testing.assert_close(worst_case_loss(main_l, worst_l, main_u, worst_u), expected)


def test_dst_pseudo_decoders_supervise_the_other_network_and_stay_untrained():
    from scdl.frameworks.dst import DSTModule

    m = _cps(DSTModule)
    assert not any(p.requires_grad for p in m.pseudo_decoders.parameters())
    batch = semi_batch(C, 16, seed=9)
    m.training_step(batch, 0).backward()
    for name, p in m.named_parameters():
        if name.startswith("pseudo_decoders"):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the term by hand: A's main logits on B's pseudo decoder's confident labels, and back
    x = torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]])
    m.pseudo_decoders["b"].out_conv.weight.data.mul_(50.0)  # B's pseudo decoder: confident
    with torch.no_grad():
        ea, eb = m.net_a.encode(x), m.net_b.encode(x)
        la, lb = m.net_a.head(m.net_a.decode(ea)), m.net_b.head(m.net_b.decode(eb))
        qa = m.pseudo_decoders["a"](ea).softmax(1).max(1)
        qb = m.pseudo_decoders["b"](eb).softmax(1).max(1)
        wa, wb = m.worst_decoders["a"](ea), m.worst_decoders["b"](eb)
        term = m.cps_term(la, lb, 0, 2, batch["labeled"]["label"], (ea, eb))
    assert (qb.values > 0.95).any()
    ce = (F.cross_entropy(la, qb.indices, reduction="none") * (qb.values > 0.95)).mean() + (
        F.cross_entropy(lb, qa.indices, reduction="none") * (qa.values > 0.95)
    ).mean()
    from scdl.frameworks.dst import worst_case_loss

    worst = worst_case_loss(la[:2], wa[:2], la[2:], wa[2:]) + worst_case_loss(
        lb[:2], wb[:2], lb[2:], wb[2:]
    )
    torch.testing.assert_close(term, ce + worst)
    from scdl.models.monai_backbones import MonaiUNet

    with pytest.raises(TypeError, match="make_decoder"):  # a backbone without extra decoders
        DSTModule(
            backbone=MonaiUNet(num_classes=C, base_filters=4),
            backbone_b=MonaiUNet(num_classes=C, base_filters=4),
            sup_loss=WeightedCEDiceLoss(),
            unsup_loss=PseudoLabelLoss(WeightedCEDiceLoss()),
            num_classes=C,
        )


# --- URPC --------------------------------------------------------------------------------------
def test_urpc_pyramid_consistency_by_hand():
    """The reference's per-scale KL 'variance', exp(-v) rectified squared distance to the mean
    prediction, + mean variance; written out with numpy on two scales."""
    from scdl.frameworks.urpc import pyramid_consistency

    g = torch.Generator().manual_seed(10)
    probs = [torch.randn(1, C, 2, 2, 1, generator=g).softmax(1) for _ in range(2)]
    p = [t.numpy().astype(np.float64) for t in probs]
    q = (p[0] + p[1]) / 2
    losses = []
    for pk in p:
        v = (q * (np.log(q) - np.log(pk))).sum(1, keepdims=True)
        w = np.exp(-v)
        losses.append(((q - pk) ** 2 * w).mean() / (w.mean() + 1e-8) + v.mean())
    assert math.isclose(pyramid_consistency(probs).item(), np.mean(losses), rel_tol=1e-5)
    # the mean prediction is not detached (the reference): gradients reach every scale through it
    a = probs[0].clone().requires_grad_(True)
    pyramid_consistency([a, probs[1]]).backward()
    assert a.grad.abs().sum() > 0


def test_urpc_supervises_every_scale_and_trains_every_parameter():
    from scdl.frameworks.urpc import URPCModule, pyramid_consistency

    torch.manual_seed(0)
    sup = WeightedCEDiceLoss(ce_weight=0.5, dice_weight=0.5, smooth=1e-8)
    m = URPCModule(VNet(num_classes=C, base_filters=4), sup, num_classes=C, unsup_weight=1.0,
                   rampup_steps=0)  # fmt: skip
    m.log_dict = lambda *a, **k: None
    m.log = lambda *a, **k: None
    assert [h.in_channels for h in m.aux_heads] == [32, 16, 8]  # 8f, 4f, 2f
    batch = semi_batch(C, 16, seed=11)
    loss = m.training_step(batch, 0)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad():  # by hand: 4 full-size outputs, sup on the labeled, pyramid on the rest
        x = torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]])
        stages = m.net.decode_stages(m.net.encode(x))
        outs = [m.net.head(stages[-1])] + [
            F.interpolate(h(s), size=(16, 16, 16), mode="trilinear")
            for h, s in zip(m.aux_heads, stages[:-1], strict=True)
        ]
        y = batch["labeled"]["label"]
        expected = sum(sup(o[:2], y) for o in outs) / 4
        expected = expected + pyramid_consistency([o[2:].softmax(1) for o in outs])
    torch.testing.assert_close(loss.detach(), expected)
    # the reference draws every conv Kaiming-normal, the stage classifiers too: std sqrt(2 / fan_in)
    # (torch's default would give 1 / sqrt(3 fan_in), 0.41 of it)
    big = URPCModule(VNet(num_classes=14, base_filters=16), sup, num_classes=14)
    weights = big.aux_heads[0].weight  # (14, 128, 1, 1, 1)
    assert abs(float(weights.std()) / math.sqrt(2 / weights.shape[1]) - 1) < 0.1
    with pytest.raises(TypeError, match="decode_stages"):
        from scdl.models.monai_backbones import MonaiUNet

        URPCModule(MonaiUNet(num_classes=C, base_filters=4), sup, num_classes=C)


# --- their state is in the checkpoint --------------------------------------------------------
def _crest_cps():
    return _cps(sup_loss=CountWeightedLoss(C, "crest"), sup_loss_b=CountWeightedLoss(C, "crest"))


def _dst():
    from scdl.frameworks.dst import DSTModule

    return _cps(DSTModule)


@pytest.mark.parametrize(
    "make",
    [
        _crest_cps,
        lambda: _cps(CLDModule, bank_every=1),
        lambda: _cps(DePLModule, patch_size=(16, 16, 16), threshold=0.0),  # every voxel counts
        _dst,
        lambda: _acisis(update_every=2),  # rates set at step 2, used at step 3
    ],
    ids=["crest", "cld", "depl", "dst", "acisis"],
)
def test_a_module_restored_from_its_state_dict_takes_the_same_next_step(make):
    """Class weights, confidence banks, DePL's running prediction, Acisis's rates and the extra
    decoders' statistics move during training; a checkpoint (state dict) carries them."""
    batch = semi_batch(C, 16, seed=12)
    m = make()
    for step in range(2):
        m.training_step(batch, step)
    fresh = make()
    fresh.load_state_dict(m.state_dict())
    torch.manual_seed(5)
    expected = m.training_step(batch, 2)
    torch.manual_seed(5)
    torch.testing.assert_close(fresh.training_step(batch, 2), expected, rtol=0, atol=0)


def test_adsh_restarts_its_window_on_resume():
    m = _cps(AdshModule, patch_size=(2, 2, 2), window_samples=4)
    m.update_thresholds(0, torch.randn(2, C, 2, 2, 2))
    state = m.state_dict()
    assert "window" not in state and int(state["window_fill"][0]) == 2
    checkpoint = {"state_dict": dict(state)}
    m.on_load_checkpoint(checkpoint)
    assert not checkpoint["state_dict"]["window_fill"].any()
