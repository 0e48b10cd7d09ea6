import pytest
import torch

from scdl.models.ema import EMATeacher
from scdl.models.vnet import VNet


@pytest.mark.parametrize("norm", ["batchnorm", "instancenorm", "groupnorm"])
def test_vnet_shapes_and_features(norm):
    net = VNet(in_channels=1, num_classes=5, base_filters=4, normalization=norm)
    x = torch.randn(2, 1, 32, 16, 48)
    logits, feats = net.forward_features(x)
    assert logits.shape == (2, 5, 32, 16, 48)
    assert feats.shape == (2, 4, 32, 16, 48)  # x9: base_filters channels at input resolution
    assert torch.allclose(net.head(feats), logits)
    skips = net.encode(x)
    assert [s.shape[1] for s in skips] == [4, 8, 16, 32, 64]
    assert skips[-1].shape[2:] == (2, 1, 3)  # four halvings


def test_vnet_init_variants_differ():
    torch.manual_seed(0)
    a = VNet(num_classes=3, base_filters=4, init="kaiming")
    torch.manual_seed(0)
    b = VNet(num_classes=3, base_filters=4, init="xavier")
    assert not torch.allclose(a.block1[0].weight, b.block1[0].weight)
    with pytest.raises(ValueError, match="normalization"):
        VNet(normalization="layernorm")


def test_ema_update_math():
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    teacher = EMATeacher(student, decay=0.9)
    assert teacher.alpha(0) == 0.0 and teacher.alpha(1) == 0.5 and teacher.alpha(100) == 0.9
    t0 = [p.clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(2.0)
        student[1].num_batches_tracked.fill_(7)
    a = teacher.update(student, step=50)  # alpha = min(1 - 1/51, 0.9) = 0.9
    assert a == pytest.approx(0.9)
    for t_before, t_now, s in zip(
        t0, teacher.module.parameters(), student.parameters(), strict=True
    ):
        torch.testing.assert_close(t_now, 0.9 * t_before + 0.1 * s)
    torch.testing.assert_close(teacher.module[1].running_mean, torch.full((2,), 0.2))
    assert int(teacher.module[1].num_batches_tracked) == 7  # integer buffers are copied


def test_teacher_receives_no_gradient():
    student = VNet(num_classes=3, base_filters=4)
    teacher = EMATeacher(student, decay=0.99)
    x = torch.randn(2, 1, 16, 16, 16)
    out = teacher(x)
    assert not out.requires_grad
    loss = student(x).sum() + out.sum()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())


def test_ema_foreach_update_is_bitwise_the_per_tensor_loop():
    """The multi-tensor EMA update (the default, fewer kernels) gives exactly the loop's teacher."""
    import torch

    from scdl.models.ema import EMATeacher
    from scdl.models.vnet import VNet

    torch.manual_seed(0)
    student = VNet(num_classes=3, base_filters=4)
    fast, slow = EMATeacher(student, 0.99, foreach=True), EMATeacher(student, 0.99, foreach=False)
    for step in range(3):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            student(torch.randn(2, 1, 16, 16, 16))  # moves the BatchNorm running statistics
        fast.update(student, step)
        slow.update(student, step)
    for a, b in zip(fast.state_dict().values(), slow.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    first_t, first_s = next(fast.module.parameters()), next(student.parameters())
    assert not torch.equal(first_t, first_s)  # the teacher lags the student
