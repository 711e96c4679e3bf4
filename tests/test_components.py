"""UNet, losses, schedules, EMA, augmentation: the shared pieces."""
import math

import numpy as np
import pytest
import torch

from benchmark.config import TrainConfig
from benchmark.data.augment import AUGMENTATIONS, resize_nearest
from benchmark.ema import ema_update
from benchmark.losses import dice_ce_loss, dice_loss, softmax_mse
from benchmark.nets import build_network
from benchmark.nets.unet import UNet2D
from benchmark.schedules import consistency_weight, lr_factor, sigmoid_rampup


def test_unet_matches_ssl4mis_size():
    net = UNet2D(in_channels=1, num_classes=4)
    assert sum(p.numel() for p in net.parameters()) == 1_813_764  # SSL4MIS UNet(1, 4): ~1.81 M
    assert net(torch.zeros(2, 1, 64, 48)).shape == (2, 4, 64, 48)


def test_unet_dropout_only_in_encoder():
    net = build_network("unet", 1, 4)
    enc = [m.p for m in net.encoder.modules() if isinstance(m, torch.nn.Dropout)]
    dec = [m.p for m in net.decoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert enc == [0.05, 0.1, 0.2, 0.3, 0.5]
    assert all(p == 0.0 for p in dec)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_high_for_a_wrong_one():
    target = torch.randint(0, 3, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float()
    assert dice_loss(wrong, target).item() > 0.99


def test_dice_ce_is_half_the_sum():
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    expected = 0.5 * (torch.nn.functional.cross_entropy(logits, target) + dice_loss(logits.softmax(1), target))
    assert dice_ce_loss(logits, target).item() == pytest.approx(expected.item())


def test_softmax_mse_zero_for_equal_inputs():
    x = torch.randn(2, 4, 8, 8)
    assert softmax_mse(x, x).item() == 0.0 and softmax_mse(x, -x).item() > 0


def test_sigmoid_rampup_and_ssl4mis_consistency_weight():
    assert sigmoid_rampup(0, 200) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(200, 200) == 1.0 and sigmoid_rampup(500, 200) == 1.0
    assert consistency_weight(30000, 0.1, 200) == pytest.approx(0.1)       # full at 30k steps
    assert consistency_weight(149, 0.1, 200) == pytest.approx(0.1 * math.exp(-5))  # 149 // 150 == 0


def test_lr_schedules():
    poly = TrainConfig(iterations=100)
    assert lr_factor(0, poly) == 1.0 and lr_factor(50, poly) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(10, TrainConfig(lr_schedule="constant")) == 1.0
    assert lr_factor(5000, TrainConfig(lr_schedule="step", step_size=2500)) == pytest.approx(0.01)


def test_ema_copies_at_step_zero_then_averages():
    student, teacher = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    ema_update(teacher, student, decay=0.99, step=0)
    assert torch.equal(teacher.weight, student.weight)
    before = teacher.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema_update(teacher, student, decay=0.99, step=1000)
    torch.testing.assert_close(teacher.weight, 0.99 * before + 0.01 * student.weight)


@pytest.mark.parametrize("rule", ["ssl4mis-2021", "ssl4mis-2025", "none"])
def test_augmentations_keep_label_values_and_shape(rule):
    rng = np.random.default_rng(0)
    image = rng.random((1, 40, 30)).astype(np.float32)
    label = rng.integers(0, 4, (40, 30)).astype(np.uint8)
    for _ in range(20):
        img, lab = AUGMENTATIONS.get(rule).sample(image, label, rng, (32, 32))
        assert set(np.unique(lab)) <= {0, 1, 2, 3}
        assert img.shape == (1, 32, 32) and lab.shape == (32, 32)


def test_resize_nearest_roundtrip_keeps_labels():
    lab = np.random.default_rng(0).integers(0, 4, (50, 70)).astype(np.uint8)
    small = resize_nearest(lab, (32, 32))
    assert small.shape == (32, 32) and set(np.unique(small)) <= set(np.unique(lab))
    assert resize_nearest(small, (50, 70)).shape == (50, 70)
