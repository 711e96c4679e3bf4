"""The shared pieces in n-D: losses, boxes / pasting / CutMix, connected components, block masks and device
augmentations on 3D (B, C, D, H, W) inputs against brute force, and on 2D against the 2D-only formulas they
replaced (copied here briefly as `old_*`), which they must reproduce exactly (same values, same draws)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from benchmark.data.device_augment import colour_jitter, gaussian_blur, random_flip
from benchmark.losses import dice_loss, dice_loss_per_sample, entropy_map, masked_ce_loss, soft_dice_loss
from benchmark.masks import largest_component_per_sample, random_block_masks, upsample_block_mask
from benchmark.mixing import Box, box_mask, cutmix_masks, paste, sample_box


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------- the 2D formulas as they were
def old_soft_dice(p, t, eps=1e-5, mask=None):
    m = 1.0 if mask is None else (mask.unsqueeze(1) if mask.dim() == 3 else mask).to(p.dtype)
    inter, den = (p * t * m).sum((0, 2, 3)), (p * p * m).sum((0, 2, 3)) + (t * t * m).sum((0, 2, 3))
    return (1 - (2 * inter + eps) / (den + eps)).mean()


def old_onehot(target, c):
    return F.one_hot(target.long(), c).permute(0, 3, 1, 2).float()


def old_dice_per_sample(p, target, eps=1e-5):
    t = old_onehot(target, p.shape[1])
    return 1 - ((2 * (p * t).sum((2, 3)) + eps) / (p.sum((2, 3)) + t.sum((2, 3)) + eps)).mean()


def old_sample_box(height, width, ratio, g):
    rh, rw = (ratio, ratio) if isinstance(ratio, float) else ratio
    h, w = int(height * rh), int(width * rw)
    top = int(torch.randint(0, max(height - h, 1), (), generator=g))
    left = int(torch.randint(0, max(width - w, 1), (), generator=g))
    return (top, left), (h, w)


def old_cutmix(n, height, width, p, g, area=(0.02, 0.4), aspect=(0.3, 1 / 0.3)):
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    for i in range(n):
        if float(torch.rand((), generator=g)) >= p:
            continue
        a = area[0] + (area[1] - area[0]) * float(torch.rand((), generator=g))
        r = aspect[0] + (aspect[1] - aspect[0]) * float(torch.rand((), generator=g))
        (top, left), (h, w) = old_sample_box(height, width, (min(1.0, (a * r) ** 0.5), min(1.0, (a / r) ** 0.5)), g)
        masks[i, top:top + h, left:left + w] = True
    return masks


def old_jitter(x, b, c, p, g):
    shape = (-1, 1, 1, 1)
    apply = (torch.rand(x.shape[0], generator=g) < p).view(shape)
    fb = (1 + b * (2 * torch.rand(x.shape[0], generator=g) - 1)).view(shape)
    fc = (1 + c * (2 * torch.rand(x.shape[0], generator=g) - 1)).view(shape)
    y = (x * fb).clamp(0, 1)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(apply, ((y - mean) * fc + mean).clamp(0, 1), x)


def old_blur(x, p, g, sigma=(0.1, 2.0)):
    n, c = x.shape[:2]
    apply = torch.rand(n, generator=g) < p
    s = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(n, generator=g)
    r = math.ceil(3 * sigma[1])
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t[None] ** 2 / (2 * s[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)
    y = F.pad(x.reshape(1, n * c, *x.shape[2:]), (r, r, r, r), mode="reflect")
    y = F.conv2d(F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c), k.view(n * c, 1, -1, 1), groups=n * c)
    return torch.where(apply.view(-1, 1, 1, 1), y.view_as(x), x)


# ------------------------------------------------------------------------------------------------ losses
def probs_and_target(spatial, b=2, c=4, seed=0):
    g = gen(seed)
    return torch.randn(b, c, *spatial, generator=g).softmax(1), torch.randint(0, c, (b, *spatial), generator=g)


def test_losses_on_2d_are_the_old_formulas():
    p, t = probs_and_target((6, 7))
    q = torch.rand(p.shape, generator=gen(1))
    mask_b, mask_s = torch.rand(2, 6, 7, generator=gen(2)), torch.rand(6, 7, generator=gen(3)) > 0.5
    assert torch.equal(soft_dice_loss(p, q), old_soft_dice(p, q))
    for mask in (None, mask_b, mask_s):
        assert torch.equal(dice_loss(p, t, mask=mask), old_soft_dice(p, old_onehot(t, 4), mask=mask))
    assert torch.equal(dice_loss_per_sample(p, t), old_dice_per_sample(p, t))


def test_losses_on_3d_are_per_class_loops():
    p, t = probs_and_target((3, 4, 5))
    mask = torch.rand(2, 3, 4, 5, generator=gen(1))
    eps = 1e-5

    def batch_dice(m):
        return torch.stack([1 - (2 * (p[:, c] * (t == c) * m).sum() + eps)
                            / ((p[:, c] ** 2 * m).sum() + ((t == c).float() * m).sum() + eps) for c in range(4)]).mean()

    per_sample = [1 - (2 * (p[i, c] * (t[i] == c)).sum() + eps) / (p[i, c].sum() + (t[i] == c).sum() + eps)
                  for i in range(2) for c in range(4)]
    torch.testing.assert_close(dice_loss(p, t), batch_dice(torch.ones(())))
    torch.testing.assert_close(dice_loss(p, t, mask=mask), batch_dice(mask))
    torch.testing.assert_close(dice_loss(p, t, mask=mask[0]), batch_dice(mask[0]))      # (*spatial) mask
    torch.testing.assert_close(soft_dice_loss(p, F.one_hot(t, 4).movedim(-1, 1).float(), mask=mask), batch_dice(mask))
    torch.testing.assert_close(dice_loss_per_sample(p, t), torch.stack(per_sample).mean())
    # the pixel-wise losses are already n-D: entropy and masked CE as per-voxel loops over the classes
    torch.testing.assert_close(entropy_map(p), -sum(p[:, c] * torch.log(p[:, c] + 1e-6) for c in range(4)))
    logits, keep = torch.randn(p.shape, generator=gen(4)), mask > 0.5
    ce = -torch.log_softmax(logits, 1).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(masked_ce_loss(logits, t, keep), (ce * keep).mean())


# ---------------------------------------------------------------------------------------- boxes and paste
@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 12)] * 3), ratio=st.floats(0.05, 1.0), seed=st.integers(0, 2 ** 16))
def test_3d_box_fits_with_int_ratio_sides(shape, ratio, seed):
    size = tuple(int(ratio * s) for s in shape)
    if min(size) < 1:
        with pytest.raises(ValueError):
            sample_box(shape, ratio, gen(seed))
        return
    box = sample_box(shape, ratio, gen(seed))
    assert box.size == size
    assert all(0 <= a < max(s - n, 1) for a, s, n in zip(box.start, shape, size))   # far border excluded
    mask = box_mask(shape, box)
    assert mask.shape == shape and mask.sum() == math.prod(size) and mask[box.slices].eq(1).all()


def test_3d_box_starts_cover_the_open_range_and_a_ratio_per_axis():
    g = gen()
    boxes = [sample_box((10, 7, 5), (0.5, 0.5, 1.0), g) for _ in range(300)]
    assert {b.size for b in boxes} == {(5, 3, 5)}
    assert [{b.start[a] for b in boxes} for a in range(3)] == [set(range(5)), set(range(4)), {0}]
    with pytest.raises(ValueError):
        sample_box((4, 4, 4), (0.5, 0.5))                                        # one ratio per axis


def test_2d_boxes_and_cutmix_draw_exactly_as_before():
    for ratio in (2 / 3, 0.5, (0.5, 0.2), (1.0, 0.3)):
        g_new, g_old = gen(7), gen(7)
        for _ in range(20):
            assert tuple(sample_box((20, 30), ratio, g_new)) == old_sample_box(20, 30, ratio, g_old)
    assert torch.equal(cutmix_masks(50, (24, 17), 0.6, generator=gen(3)), old_cutmix(50, 24, 17, 0.6, gen(3)))


def test_3d_cutmix_volume_fraction():
    m = cutmix_masks(200, (16, 32, 32), p=1.0, generator=gen())
    frac = m.flatten(1).float().mean(1)
    assert m.shape == (200, 16, 32, 32) and frac.min() > 0.005 and frac.max() <= 0.45


def test_paste_in_3d_for_images_and_labels_with_shared_or_per_sample_masks():
    b, c, spatial = 2, 3, (4, 5, 6)
    box = Box((1, 0, 2), (2, 5, 3))
    shared = box_mask(spatial, box)
    per_sample = torch.stack([shared, 1 - shared])
    bg, fg = torch.zeros(b, c, *spatial), torch.ones(b, c, *spatial)
    assert torch.equal(paste(bg, fg, shared), shared.expand(b, c, *spatial))
    assert torch.equal(paste(bg, fg, per_sample), per_sample[:, None].expand(b, c, *spatial))
    lab_bg, lab_fg = torch.full((b, *spatial), 3), torch.full((b, *spatial), 1)
    labels = paste(lab_bg, lab_fg, shared)
    assert labels.dtype == torch.int64 and torch.equal(labels, torch.where(shared.bool(), 1, 3).expand(b, *spatial))
    assert torch.equal(paste(lab_bg, lab_fg, per_sample), torch.where(per_sample.bool(), 1, 3))
    # 2D as before: (B, H, W) masks over (B, C, H, W) images, (H, W) masks over labels
    m2 = torch.rand(2, 6, 5, generator=gen()) > 0.5
    x0, x1 = torch.zeros(2, 4, 6, 5), torch.ones(2, 4, 6, 5)
    assert torch.equal(paste(x0, x1, m2), torch.where(m2.unsqueeze(1), x1, x0))
    assert torch.equal(paste(x0[:, 0], x1[:, 0], m2[0]), torch.where(m2[0], x1[:, 0], x0[:, 0]))
    # depth = batch: (B, D, H, W) labels + a (D, H, W) mask look like 2D images + per-sample masks
    square = torch.zeros(2, 2, 5, 6)
    with pytest.raises(ValueError, match="spatial_dims"):
        paste(square, square + 1, shared[:2])
    assert torch.equal(paste(square, square + 1, shared[:2], spatial_dims=3), shared[:2].expand(2, 2, 5, 6))
    assert torch.equal(paste(square, square + 1, shared[:2], spatial_dims=2), shared[:2, None].expand(2, 2, 5, 6))


# ------------------------------------------------------------------------------ components and block masks
def brute_largest(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros_like(labels)
    for i, lab in enumerate(labels):
        for c in range(1, num_classes):
            comp, n = ndimage.label(lab == c, np.ones((3,) * lab.ndim))           # full connectivity
            if n:
                sizes = [(comp == j).sum() for j in range(1, n + 1)]
                out[i][comp == 1 + int(np.argmax(sizes))] = c
    return out


@pytest.mark.parametrize("spatial", [(9, 10), (5, 6, 7)])
def test_largest_component_per_sample_is_scipy_brute_force(spatial):
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.choice(3, size=(3, *spatial), p=[0.6, 0.2, 0.2]))
    out = largest_component_per_sample(labels, 3)
    assert out.shape == labels.shape and np.array_equal(out.numpy(), brute_largest(labels.numpy(), 3))


def test_3d_components_touching_by_a_corner_are_one():
    lab = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    lab[0, 0, 0, 0] = lab[0, 1, 1, 1] = 1          # corner-connected pair: kept (26-connectivity)
    lab[0, 3, 3, 3] = 1                             # singleton: removed
    out = largest_component_per_sample(lab, 2)
    assert out.sum() == 2 and out[0, 1, 1, 1] == 1 and out[0, 3, 3, 3] == 0


def test_block_masks_in_3d_and_2d_as_before():
    torch.manual_seed(0)
    masks = random_block_masks(5, (2, 3, 4), 0.5)
    assert masks.shape == (5, 2, 3, 4) and (masks.flatten(1).sum(1) == 12).all()
    torch.manual_seed(1)
    new = random_block_masks(4, (7, 7), 0.7)
    torch.manual_seed(1)
    order = torch.rand(4, 49).argsort(1)
    old = torch.zeros(4, 49, dtype=torch.bool).scatter_(1, order[:, :35], True).view(4, 7, 7)
    assert torch.equal(new, old)
    up = upsample_block_mask(masks, (4, 6, 12))
    d, h, w = torch.meshgrid(torch.arange(4), torch.arange(6), torch.arange(12), indexing="ij")
    assert torch.equal(up, masks[:, d // 2, h // 2, w // 3])
    assert torch.equal(upsample_block_mask(new, (14, 21)), new.repeat_interleave(2, -2).repeat_interleave(3, -1))
    with pytest.raises(ValueError):
        upsample_block_mask(masks, (4, 6, 10))


# -------------------------------------------------------------------------------------- device augment
def test_colour_jitter_one_channel_is_unchanged_and_rgb_stays_in_range():
    x = torch.rand(8, 1, 10, 10, generator=gen())
    g_new, g_old = gen(5), gen(5)
    for saturation in (0.0, 0.8):                          # saturation is ignored on one channel
        new = colour_jitter(x, 0.4, 0.4, 0.7, g_new, saturation=saturation)
        assert torch.equal(new, old_jitter(x, 0.4, 0.4, 0.7, g_old))
    assert torch.equal(torch.rand(3, generator=g_new), torch.rand(3, generator=g_old))  # same random stream
    rgb = torch.rand(8, 3, 10, 10, generator=gen(1))
    assert torch.equal(colour_jitter(rgb, 0.4, 0.4, 1.0, gen(2)), old_jitter(rgb, 0.4, 0.4, 1.0, gen(2)))
    y = colour_jitter(rgb, 0.4, 0.4, 1.0, gen(2), saturation=1.0)
    assert y.shape == rgb.shape and y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, rgb)
    assert not torch.allclose(y, colour_jitter(rgb, 0.4, 0.4, 1.0, gen(2)))
    grey_rgb = x.expand(8, 3, 10, 10)                      # R = G = B: saturation has nothing to change
    torch.testing.assert_close(colour_jitter(grey_rgb, 0.0, 0.0, 1.0, gen(), saturation=1.0), grey_rgb)
    with pytest.raises(ValueError):
        colour_jitter(torch.rand(2, 2, 4, 4), 0.1, 0.1, saturation=0.5)


def test_flip_and_blur_in_3d_and_2d_blur_as_before():
    x = torch.rand(3, 2, 8, 9, 10, generator=gen())
    y, flipped = random_flip(x, 1.0, gen())
    assert flipped.all() and torch.equal(y, x.flip(-1))
    blurred = gaussian_blur(x, p=1.0, generator=gen())
    assert blurred.shape == x.shape and blurred.var() < x.var()
    const = torch.full((2, 1, 7, 8, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(const, p=1.0, generator=gen()), const)
    x2 = torch.rand(4, 1, 16, 16, generator=gen(1))
    assert torch.equal(gaussian_blur(x2, 0.5, generator=gen(2)), old_blur(x2, 0.5, gen(2)))
    with pytest.raises(ValueError):
        gaussian_blur(torch.rand(2, 1, 16), p=1.0)
