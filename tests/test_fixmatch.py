"""FixMatch and the shared weak/strong pieces: confidence mask, CutMix box, device augmentations, smoke runs."""
import pytest
import torch

from benchmark.data.device_augment import colour_jitter, gaussian_blur, random_flip
from benchmark.losses import confidence_mask, dice_loss, masked_ce_loss
from benchmark.mixing import box_mask, cutmix_masks, paste, sample_box
from methods.base import METHODS
from methods.fixmatch import FixMatch, FixMatchConfig, ssl4mis_pseudo_labels, strong_view
from method_helpers import method_ctx, smoke_run, tiny_batch


def test_confidence_mask_honours_tau():
    probs = torch.tensor([[0.96, 0.02, 0.01, 0.01], [0.95, 0.05, 0, 0], [0.5, 0.4, 0.1, 0], [0.1, 0.0, 0.9, 0]])
    probs = probs.T.reshape(1, 4, 2, 2)  # pixel k (row-major) = row k
    pseudo, mask = confidence_mask(probs, 0.95)
    assert mask.flatten().tolist() == [True, True, False, False]
    assert pseudo.flatten().tolist() == [0, 0, 0, 2]
    assert confidence_mask(probs, 0.9)[1].flatten().tolist() == [True, True, False, True]


def test_masked_losses_ignore_masked_pixels_and_equal_plain_dice_when_all_kept():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    full = torch.ones(2, 8, 8, dtype=torch.bool)
    torch.testing.assert_close(dice_loss(logits.softmax(1), target, mask=full), dice_loss(logits.softmax(1), target))
    half = full.clone()
    half[:, :, 4:] = False
    changed = logits.clone()
    changed[:, :, :, 4:] = torch.randn(2, 4, 8, 4) * 10     # only masked-out pixels change
    for fn in (lambda l: dice_loss(l.softmax(1), target, mask=half), lambda l: masked_ce_loss(l, target, half)):
        torch.testing.assert_close(fn(logits), fn(changed))
    assert masked_ce_loss(logits, target, ~full).item() == 0


def test_rectangular_box_fits_and_has_the_requested_sides():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        box = sample_box((20, 30), (0.5, 0.2), g)
        assert box.size == (10, 6)
        assert all(0 <= s and s + n <= side for s, n, side in zip(box.start, box.size, (20, 30)))
    assert box_mask((20, 30), box).sum() == 60
    with pytest.raises(ValueError):
        sample_box((10, 10), (0.5, 1.5))


def test_cutmix_masks_area_and_probability():
    g = torch.Generator().manual_seed(0)
    m = cutmix_masks(400, (64, 64), p=0.5, generator=g)
    filled = m.flatten(1).any(1)
    assert 0.4 < filled.float().mean() < 0.6
    area = m.flatten(1).float().mean(1)[filled]
    assert area.min() >= 0.01 and area.max() <= 0.45
    assert not cutmix_masks(5, (16, 16), p=0.0, generator=g).any()


def test_device_augmentations():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 16, 16, generator=g)
    y, flipped = random_flip(x, 1.0, g)
    torch.testing.assert_close(y, x.flip(-1))
    assert flipped.all() and torch.equal(random_flip(x, 0.0, g)[0], x)
    assert torch.equal(colour_jitter(x, 0.5, 0.5, p=0.0, generator=g), x)
    jittered = colour_jitter(x, 0.5, 0.5, p=1.0, generator=g)
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.allclose(jittered, x)
    blurred = gaussian_blur(x, p=1.0, generator=g)
    assert blurred.shape == x.shape and blurred.var() < x.var()
    const = torch.full((2, 1, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(const, p=1.0, generator=g), const)


def test_strong_view_targets_follow_the_box():
    g = torch.Generator().manual_seed(1)
    from methods.fixmatch import WeakStrongConfig

    cfg = WeakStrongConfig(colour_p=0.0, blur_p=0.0, cutmix_p=1.0)
    weak = torch.arange(4).float().view(4, 1, 1, 1).expand(4, 1, 16, 16) / 4
    view = strong_view(weak, cfg, generator=g)
    # with no colour/blur the strong image is exactly the weak image mixed by the box
    torch.testing.assert_close(view.image, paste(weak, weak[view.partner], view.box))
    labels = torch.arange(4).view(4, 1, 1).expand(4, 16, 16)
    mixed = view.targets(labels)
    assert torch.equal(mixed, (view.image[:, 0] * 4).round().long())


def test_pseudo_labels_come_from_the_weak_view(monkeypatch):
    """The pseudo-labels are the argmax of the prediction on the weak view, mixed like the strong image."""
    import methods.fixmatch as fm

    torch.manual_seed(0)
    method = FixMatch(FixMatchConfig(tau=0.0, cutmix_p=1.0, colour_p=1.0), method_ctx())
    method.model = torch.nn.Conv2d(1, 4, 3, padding=1)          # deterministic: no dropout, no BN
    method.optimizer = torch.optim.SGD(method.model.parameters(), lr=0.0)
    labeled, u = tiny_batch(n=2, m=3)
    seen = {}
    real_loss, real_strong = fm.unsupervised_loss, fm.strong_view
    monkeypatch.setattr(fm, "unsupervised_loss", lambda k, l, p, m: seen.update(pseudo=p, mask=m, strong_logits=l) or real_loss(k, l, p, m))
    monkeypatch.setattr(fm, "strong_view", lambda w, c, **kw: seen.update(weak=w, view=real_strong(w, c, **kw)) or seen["view"])
    method.train_step(labeled, u, 0)
    with torch.no_grad():   # a conv without BN or dropout: the eval pass labelling the box equals the train pass
        expected = seen["view"].targets(method.model(seen["weak"]).argmax(1))
    assert torch.equal(seen["pseudo"], expected)
    assert not torch.equal(seen["pseudo"], seen["strong_logits"].argmax(1))  # not the strong view's own argmax
    assert seen["mask"].all()   # tau = 0 keeps every pixel
    method.cfg.tau = 1.01       # nothing passes: the unsupervised loss vanishes
    assert method.train_step(labeled, u, 1)["loss_u"].item() == 0


def test_ssl4mis_quirk_rule():
    probs = torch.tensor([0.9, 0.05, 0.03, 0.02]).view(1, 4, 1, 1).repeat(1, 1, 1, 2)
    probs[..., 1] = torch.tensor([0.2, 0.5, 0.2, 0.1]).view(1, 4, 1)
    # pixel 0: (0.9-0.02)/0.9 = 0.98 > 0.8 -> class 0; pixel 1: (0.5-0.1)/0.5 = 0.8, not > 0.8 -> background
    assert ssl4mis_pseudo_labels(probs, 0.8).flatten().tolist() == [0, 0]
    assert ssl4mis_pseudo_labels(probs, 0.7).flatten().tolist() == [0, 1]


def test_registered_with_presets():
    assert METHODS.get("fixmatch") is FixMatch
    assert FixMatch.presets["ssl4mis"] == {"variant": "ssl4mis"}


@pytest.mark.parametrize("cfg", [FixMatchConfig(), FixMatchConfig(unsup_loss="dice"), FixMatchConfig(variant="ssl4mis")],
                         ids=["paper", "dice", "ssl4mis"])
def test_fixmatch_smoke(synthetic, tmp_path, cfg):
    rec = smoke_run(synthetic, tmp_path, FixMatch, cfg)
    assert all("train/loss_u" in m for m in rec.train.values())
