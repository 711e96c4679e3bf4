"""Augmentation samplers: SSL4MIS rules unchanged for C = 1, the LA rot/flip/crop, the 2D image rule."""
import numpy as np
import pytest
from scipy import ndimage

from benchmark.data.augment import (AUGMENTATIONS, AugmentationRule, crop_start, la_pad_widths,
                                    resize_nearest)


# ------------------------------------------------- reference: the former 2D rules (native size), verbatim
def _old_rot90_flip(image, label, rng):
    k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
    return (np.flip(np.rot90(image, k), axis).copy(), np.flip(np.rot90(label, k), axis).copy())


def _old_small_rotation(image, label, rng):
    angle = int(rng.integers(-20, 20))
    return (ndimage.rotate(image, angle, order=0, reshape=False),
            ndimage.rotate(label, angle, order=0, reshape=False))


def _old_2021(image, label, rng):
    if rng.random() > 0.5:
        return _old_rot90_flip(image, label, rng)
    if rng.random() > 0.5:
        return _old_small_rotation(image, label, rng)
    return image, label


def _old_2025(image, label, rng):
    if rng.random() > 0.5:
        return _old_rot90_flip(image, label, rng)
    return _old_small_rotation(image, label, rng)


def _old_none(image, label, rng):
    return image, label


def _old_resize(array, size):
    if array.shape == tuple(size):
        return array
    return ndimage.zoom(array, (size[0] / array.shape[0], size[1] / array.shape[1]), order=0)


OLD = {"ssl4mis-2021": _old_2021, "ssl4mis-2025": _old_2025, "none": _old_none}


def _case2d(seed, shape, channels=1, classes=4):
    r = np.random.default_rng(1000 + seed)
    return r.random((channels, *shape)).astype(np.float32), r.integers(0, classes, shape).astype(np.uint8)


def sample(name, image, label, seed, patch):
    return AUGMENTATIONS.get(name).sample(image, label, np.random.default_rng(seed), patch)


# ----------------------------------------------------------------------------------------- registry
def test_registry_names_dims_and_descriptions():
    dims = {e.name: e.obj.dims for e in AUGMENTATIONS}
    assert dims == {"ssl4mis-2021": (2,), "ssl4mis-2025": (2,), "none": (2,), "la-rotflip-crop": (3,),
                    "la-crop": (3,), "image-2d": (2,), "transunet": (2,)}
    for entry in AUGMENTATIONS:
        assert isinstance(entry.obj, AugmentationRule) and entry.description and "\n" not in entry.description


def test_resize_nearest_2d_unchanged_and_nd():
    lab = np.random.default_rng(0).integers(0, 4, (50, 70)).astype(np.uint8)
    for size in [(32, 32), (50, 70), (17, 90)]:
        assert np.array_equal(resize_nearest(lab, size), _old_resize(lab, size))
    vol = np.random.default_rng(1).random((20, 30, 10)).astype(np.float32)
    out = resize_nearest(vol, (16, 16, 16))
    assert out.shape == (16, 16, 16) and out.dtype == np.float32 and set(np.unique(out)) <= set(np.unique(vol))
    assert resize_nearest(vol, vol.shape) is vol
    with pytest.raises(ValueError):
        resize_nearest(vol, (16, 16))


# ------------------------------------------------------------------------------------- SSL4MIS rules
@pytest.mark.parametrize("name", ["ssl4mis-2021", "ssl4mis-2025", "none"])
@pytest.mark.parametrize("shape,patch", [((50, 70), (32, 32)), ((32, 32), (32, 32)), ((40, 30), (24, 48))])
def test_ssl4mis_c1_identical_to_former_rule(name, shape, patch):
    for seed in range(60):
        image, label = _case2d(seed, shape)
        rng = np.random.default_rng(seed)
        ref_img, ref_lab = OLD[name](image[0], label, rng)
        ref_img, ref_lab = _old_resize(ref_img, patch), _old_resize(ref_lab, patch)
        img, lab = sample(name, image, label, seed, patch)
        assert img.shape == (1, *patch) and img.dtype == np.float32 and lab.shape == patch
        assert np.array_equal(img[0], ref_img) and np.array_equal(lab, ref_lab)
        assert lab.dtype == label.dtype


@pytest.mark.parametrize("name", ["ssl4mis-2021", "ssl4mis-2025", "none", "image-2d"])
def test_2d_rules_same_transform_on_each_channel(name):
    for seed in range(30):
        image, label = _case2d(seed, (45, 60), channels=3)
        img, lab = sample(name, image, label, seed, (32, 32))
        assert img.shape == (3, 32, 32)
        for c in range(3):
            one, lab1 = sample(name, image[c:c + 1], label, seed, (32, 32))
            assert np.array_equal(img[c], one[0]) and np.array_equal(lab, lab1)


def test_ssl4mis_2021_leaves_about_a_quarter_unchanged():
    image = np.arange(12 * 10, dtype=np.float32).reshape(1, 12, 10)  # asymmetric: any rot/flip changes it
    label = np.zeros((12, 10), np.uint8)
    same = sum(np.array_equal(sample("ssl4mis-2021", image, label, s, (12, 10))[0], image) for s in range(4000))
    assert abs(same / 4000 - (0.25 + 0.25 / 40)) < 0.03


def test_wrong_shapes_are_rejected():
    image, label = _case2d(0, (20, 20))
    with pytest.raises(ValueError):
        sample("ssl4mis-2021", image[0], label, 0, (16, 16))  # no channel axis
    with pytest.raises(ValueError):
        sample("image-2d", image, label, 0, (16, 16, 16))
    with pytest.raises(ValueError):
        sample("la-rotflip-crop", image, label, 0, (16, 16))


# ------------------------------------------------------------------------------------ la-rotflip-crop
def _reference_la(image, label, rng, patch):
    """SS-Net RandomRotFlip + RandomCrop, written out with `rng` in place of np.random."""
    k = rng.integers(0, 4)
    image, label = np.rot90(image, k, axes=(1, 2)), np.rot90(label, k)
    axis = rng.integers(0, 2)
    image, label = np.flip(image, axis=1 + axis), np.flip(label, axis=axis)
    if any(label.shape[i] <= patch[i] for i in range(3)):
        pw, ph, pd = (max((patch[i] - label.shape[i]) // 2 + 3, 0) for i in range(3))
        image = np.pad(image, [(0, 0), (pw, pw), (ph, ph), (pd, pd)], mode="constant", constant_values=0)
        label = np.pad(label, [(pw, pw), (ph, ph), (pd, pd)], mode="constant", constant_values=0)
    w, h, d = label.shape
    w1, h1, d1 = (int(rng.integers(0, s - p)) if s > p else 0 for s, p in zip((w, h, d), patch))
    box = (slice(w1, w1 + patch[0]), slice(h1, h1 + patch[1]), slice(d1, d1 + patch[2]))
    return image[(slice(None), *box)], label[box]


def _coords(shape):
    """Channels = x, y, z index + 1 (0 marks padding)."""
    return np.stack(np.meshgrid(*[np.arange(s) + 1 for s in shape], indexing="ij")).astype(np.float32)


@pytest.mark.parametrize("shape", [(30, 26, 20), (20, 30, 10), (16, 16, 16), (40, 40, 17)])
def test_la_matches_reference_and_shape(shape):
    patch = (16, 16, 16)
    r = np.random.default_rng(7)
    image = np.concatenate([r.random((1, *shape)).astype(np.float32), _coords(shape)])
    label = (image[0] > 0.5).astype(np.uint8)
    for seed in range(40):
        img, lab = sample("la-rotflip-crop", image, label, seed, patch)
        ref_img, ref_lab = _reference_la(image, label, np.random.default_rng(seed), patch)
        assert img.shape == (4, *patch) and img.dtype == np.float32 and lab.shape == patch
        assert np.array_equal(img, ref_img) and np.array_equal(lab, ref_lab)
        assert np.array_equal(lab, (img[0] > 0.5).astype(np.uint8))  # label stays aligned with the image
        assert img.flags.c_contiguous and lab.flags.c_contiguous


def test_la_crop_is_the_reference_crop_without_rotation_or_flip():
    """MCF's LA transform: RandomCrop alone (same padding, same exclusive crop starts)."""
    patch, shape = (16, 16, 16), (30, 20, 12)
    image = _coords(shape)
    label = (image[0] % 2).astype(np.uint8)
    for seed in range(20):
        img, lab = sample("la-crop", image, label, seed, patch)
        rng = np.random.default_rng(seed)
        pad = [max((p - s) // 2 + 3, 0) for s, p in zip(shape, patch)]
        padded = np.pad(image, [(0, 0)] + [(w, w) for w in pad])
        starts = [int(rng.integers(0, s + 2 * w - p)) for s, w, p in zip(shape, pad, patch)]
        box = tuple(slice(b, b + p) for b, p in zip(starts, patch))
        assert np.array_equal(img, padded[(slice(None), *box)])
        assert np.array_equal(lab, np.pad(label, [(w, w) for w in pad])[box])


def test_la_z_axis_never_flipped_or_rotated_and_rot90_in_xy_plane():
    shape, patch = (24, 24, 20), (16, 16, 16)  # no padding: every axis larger than the patch
    image = _coords(shape)
    label = np.zeros(shape, np.uint8)
    seen = set()
    for seed in range(200):
        img, _ = sample("la-rotflip-crop", image, label, seed, patch)
        z = img[2]
        assert np.all(np.diff(z, axis=2) == 1) and np.all(z == z[:1, :1, :])  # z ramp kept, depends on z only
        # x, y channels: each varies along exactly one of spatial axes 0, 1 with step +-1 and not along z
        for c in (0, 1):
            assert np.all(np.diff(img[c], axis=2) == 0)
        d0 = (np.unique(np.diff(img[0], axis=0)).tolist(), np.unique(np.diff(img[0], axis=1)).tolist())
        assert d0 in [([1.0], [0.0]), ([-1.0], [0.0]), ([0.0], [1.0]), ([0.0], [-1.0])]
        # the (x, y) part as a 2x2 matrix: column c = how coordinate c changes along output axes 0, 1
        m = np.array([[np.diff(img[c], axis=a)[0, 0, 0] for c in (0, 1)] for a in (0, 1)])
        seen.add(tuple(m.ravel()))
    # rot90 then ALWAYS one flip: every outcome is a reflection of the (x, y) plane (det -1), all 4 occur;
    # the identity orientation (and any pure rotation) never does, as in the reference
    assert len(seen) == 4 and all(round(np.linalg.det(np.reshape(m, (2, 2)))) == -1 for m in seen)


def test_la_pad_widths_formula():
    assert la_pad_widths((20, 30, 10), (16, 16, 16)) == (1, 0, 6)  # z <= patch: pad every axis
    assert la_pad_widths((16, 40, 40), (16, 16, 16)) == (3, 0, 0)  # s == p triggers padding
    assert la_pad_widths((17, 18, 17), (16, 16, 16)) == (0, 0, 0)  # all larger: no padding
    assert la_pad_widths((17, 18, 12), (16, 16, 16)) == (2, 2, 5)
    assert la_pad_widths((112, 200, 60), (112, 112, 80)) == (3, 0, 13)
    for s in range(1, 40):
        for p in (8, 16, 17):
            (w,) = la_pad_widths((s,), (p,))
            assert w == (max((p - s) // 2 + 3, 0) if s <= p else 0)
            assert s + 2 * w > p  # after padding a crop start can be drawn


def test_la_padding_in_output():
    shape, patch = (20, 30, 10), (16, 16, 16)  # padded by (1, 0, 6): shape becomes (22, 30, 22)
    image = _coords(shape)
    label = np.ones(shape, np.uint8)
    starts_z = set()
    for seed in range(300):
        img, lab = sample("la-rotflip-crop", image, label, seed, patch)
        assert np.array_equal(lab, (img[2] > 0).astype(np.uint8))  # padding is 0 in image and label
        zline = img[2].max(axis=(0, 1))  # z value per output slice (0 in padding)
        j0 = int(np.argmax(zline > 0))
        d1 = int(zline[j0]) + 5 - j0  # z value 1 sits at padded index 6: value v at padded index v + 5
        assert np.array_equal(zline, [max(d1 + j - 5, 0) if d1 + j <= 15 else 0 for j in range(16)])
        starts_z.add(d1)
        assert lab.shape == patch
    assert starts_z == set(range(6))  # 0..5 drawn, 22 - 16 = 6 never


def test_crop_start_exclusive_upper_bound():
    rng = np.random.default_rng(0)
    draws = [crop_start(rng, 20, 16) for _ in range(2000)]
    assert set(draws) == {0, 1, 2, 3}  # never 4 = s - p
    assert crop_start(rng, 16, 16) == 0
    with pytest.raises(ValueError):
        crop_start(rng, 15, 16)


def test_la_crop_start_never_last_offset():
    shape, patch = (18, 18, 18), (16, 16, 16)  # no padding; s - p = 2, starts in {0, 1}
    image = _coords(shape)
    label = np.zeros(shape, np.uint8)
    starts = [set(), set(), set()]
    for seed in range(300):
        img, _ = sample("la-rotflip-crop", image, label, seed, patch)
        starts[2].add(int(img[2, 0, 0, 0]) - 1)
        for c in (0, 1):  # x / y coordinate (1-based) running along output axis a, forwards or reversed
            for a in (0, 1):
                step = np.unique(np.diff(img[c], axis=a)).tolist()
                if step == [1.0]:
                    starts[a].add(int(img[c].min()) - 1)
                elif step == [-1.0]:  # reversed axis: transformed index i holds coordinate s - i
                    starts[a].add(shape[a] - patch[a] + 1 - int(img[c].min()))
    assert starts == [{0, 1}, {0, 1}, {0, 1}]


# ------------------------------------------------------------------------------------------ image-2d
@pytest.mark.parametrize("shape,patch", [((45, 60), (32, 32)), ((60, 45), (24, 40)), ((33, 20), (32, 32)),
                                         ((32, 32), (32, 32))])
def test_image_2d_shape_and_label_values(shape, patch):
    for seed in range(20):
        image, label = _case2d(seed, shape, channels=3, classes=3)
        img, lab = sample("image-2d", image, label, seed, patch)
        assert img.shape == (3, *patch) and img.dtype == np.float32 and lab.shape == patch
        assert lab.dtype == label.dtype and set(np.unique(lab)) <= set(np.unique(label))
        assert img.min() >= image.min() - 1e-6 and img.max() <= image.max() + 1e-6  # bilinear: no overshoot


def _image_2d_expected(image, label, seed, patch):
    rng = np.random.default_rng(seed)
    h, v = rng.random() < 0.5, rng.random() < 0.5
    k = int(rng.integers(0, 4)) if patch[0] == patch[1] else 2 * int(rng.integers(0, 2))
    small = np.stack([ndimage.zoom(c, (patch[0] / c.shape[0], patch[1] / c.shape[1]), order=1, mode="nearest")
                      for c in image])
    lab = _old_resize(label, patch)

    def t(a):
        a = a[..., ::-1] if h else a
        a = a[..., ::-1, :] if v else a
        return np.rot90(a, k, axes=(-2, -1))
    return t(small), t(lab), (h, v, k)


@pytest.mark.parametrize("patch", [(32, 32), (24, 40)])
def test_image_2d_flips_and_rotations_over_seeds(patch):
    image, label = _case2d(3, (45, 60), channels=3)
    outcomes = set()
    for seed in range(200):
        img, lab = sample("image-2d", image, label, seed, patch)
        ref_img, ref_lab, drawn = _image_2d_expected(image, label, seed, patch)
        assert np.array_equal(img, ref_img) and np.array_equal(lab, ref_lab)
        outcomes.add(drawn)
    ks = {0, 1, 2, 3} if patch[0] == patch[1] else {0, 2}
    assert outcomes == {(h, v, k) for h in (False, True) for v in (False, True) for k in ks}


def test_image_2d_keeps_alignment_at_native_size():
    image, _ = _case2d(5, (32, 32), channels=1)
    label = (image[0] > 0.5).astype(np.uint8)
    for seed in range(20):
        img, lab = sample("image-2d", image, label, seed, (32, 32))
        assert np.array_equal(lab, (img[0] > 0.5).astype(np.uint8))


# ------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("name,shape,patch", [("ssl4mis-2021", (45, 60), (32, 32)),
                                              ("ssl4mis-2025", (45, 60), (32, 32)),
                                              ("none", (45, 60), (32, 32)),
                                              ("image-2d", (45, 60), (32, 32)),
                                              ("la-rotflip-crop", (20, 30, 24), (16, 16, 16))])
def test_same_seed_same_output(name, shape, patch):
    r = np.random.default_rng(0)
    image = r.random((2, *shape)).astype(np.float32)
    label = r.integers(0, 3, shape).astype(np.uint8)
    differ = False
    for seed in range(10):
        a = sample(name, image, label, [seed, 2, 5, 1], patch)
        b = sample(name, image, label, [seed, 2, 5, 1], patch)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        c = sample(name, image, label, [seed + 1, 2, 5, 1], patch)
        differ |= not np.array_equal(a[0], c[0])
    assert differ or name == "none"
