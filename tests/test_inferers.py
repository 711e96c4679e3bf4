"""Inference protocols as objects (benchmark.inference): equal to today's functions for one channel, to plain
loops for the sliding window, and sensible for several channels and 2D whole images."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.data.augment import resize_nearest
from benchmark.inference import (INFERERS, SliceWise, SlidingWindow, WholeImage, build_inferer, window_starts)
from benchmark.registry import UnknownNameError

CPU = torch.device("cpu")



def copy_of_predict_slicewise(predict, image, patch, device, resize="nearest", chunk=32):
    """Today's `benchmark.evaluate.predict_slicewise` (C = 1, image (S, H, W), square int patch), kept verbatim."""
    s, h, w = image.shape
    out = np.empty((s, h, w), dtype=np.uint8)
    if resize == "nearest":
        small = np.stack([resize_nearest(image[i], (patch, patch)) for i in range(s)])[:, None]
        for i in range(0, s, chunk):
            labels = predict(torch.from_numpy(small[i:i + chunk]).to(device)).argmax(1).to(torch.uint8).cpu().numpy()
            for j, lab in enumerate(labels):
                out[i + j] = resize_nearest(lab, (h, w))
        return out
    for i in range(0, s, chunk):
        x = torch.from_numpy(np.ascontiguousarray(image[i:i + chunk], dtype=np.float32))[:, None].to(device)
        x = F.interpolate(x, size=(patch, patch), mode="bilinear", align_corners=False)
        logits = F.interpolate(predict(x).float(), size=(h, w), mode="bilinear", align_corners=False)
        out[i:i + chunk] = logits.argmax(1).to(torch.uint8).cpu().numpy()
    return out


def conv_net(dims: int, channels: int, classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """A fixed random convolution (zero padding makes it position-dependent near window borders)."""
    torch.manual_seed(seed)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(channels, classes, 3, padding=1)
    return conv.eval().requires_grad_(False)


class RampNet(torch.nn.Module):
    """A random conv plus a ramp along the last axis, so overlapping windows really disagree."""

    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_net(dims, channels)

    def forward(self, x):
        ramp = torch.linspace(0, 2, x.shape[-1])
        out = self.conv(x)
        out[:, 1] += ramp
        return out


def pointwise_net(x: torch.Tensor) -> torch.Tensor:
    """3 channels -> 3 classes by elementwise arithmetic only (no batch-size-dependent kernels)."""
    a, b, c = x[:, 0], x[:, 1], x[:, 2]
    return torch.stack([a - b, b * 2 - c, c - a * 0.5], dim=1)


# ------------------------------------------------------------------------------------------ slicewise
@pytest.mark.parametrize("resize", ["nearest", "bilinear_logits"])
@pytest.mark.parametrize("shape, patch, chunk", [((10, 40, 56), 32, 4), ((3, 17, 33), 24, 32), ((5, 32, 32), 32, 2)])
def test_slicewise_single_channel_equals_today(resize, shape, patch, chunk):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    net = conv_net(2, 1)
    got = SliceWise((patch, patch), resize, chunk=chunk)(net, image[None], CPU)
    want = copy_of_predict_slicewise(net, image, patch, CPU, resize, chunk)
    assert got.shape == shape and got.dtype == np.uint8
    assert np.array_equal(got, want)


@pytest.mark.parametrize("resize", ["nearest", "bilinear_logits"])
def test_slicewise_three_channels_equals_per_slice_reference(resize):
    image = np.random.default_rng(1).random((3, 7, 30, 44)).astype(np.float32)
    patch = (24, 40)  # non-square
    got = SliceWise(patch, resize, chunk=3)(pointwise_net, image, CPU)
    assert got.shape == (7, 30, 44) and got.dtype == np.uint8
    for k in range(7):
        sl = image[:, k]
        if resize == "nearest":
            small = np.stack([resize_nearest(ch, patch) for ch in sl])[None]
            want = resize_nearest(pointwise_net(torch.from_numpy(small)).argmax(1)[0].numpy().astype(np.uint8), (30, 44))
        else:
            x = F.interpolate(torch.from_numpy(sl)[None], size=patch, mode="bilinear", align_corners=False)
            want = F.interpolate(pointwise_net(x), size=(30, 44), mode="bilinear", align_corners=False).argmax(1)[0]
            want = want.numpy()
        assert np.array_equal(got[k], want), k


def test_slicewise_validates_its_inputs():
    with pytest.raises(ValueError, match="sliding_window"):
        build_inferer("slicewise", (112, 112, 80))
    with pytest.raises(ValueError, match="resize"):
        SliceWise((32, 32), "bicubic")
    with pytest.raises(ValueError, match=r"image\[None\]"):
        SliceWise((32, 32))(conv_net(2, 1), np.zeros((2, 16, 16), np.float32), CPU)
    with pytest.raises(ValueError, match="stride"):
        build_inferer("slicewise", 32, stride=(4, 4))
    with pytest.raises(ValueError, match="logits"):  # a net that changes the spatial size
        SliceWise((32, 32))(lambda x: x[..., ::2, ::2], np.zeros((1, 2, 16, 16), np.float32), CPU)


# ------------------------------------------------------------------------------------------ sliding window
def naive_starts(size, patch, stride):
    """Every multiple of stride short of the end, plus the window flush with the end (written independently)."""
    return [0] if size <= patch else sorted(set(range(0, size - patch, stride)) | {size - patch})


def naive_sliding_window(predict, image, patch, stride):
    """Pad, visit every window one at a time, add its softmax and a count by slicing, average, argmax, crop."""
    pads = [max(p - n, 0) for p, n in zip(patch, image.shape[1:])]
    pad = [(0, 0)] + [(d // 2, d - d // 2) for d in pads]
    vol = np.pad(image, pad)
    score = count = None
    for corner in itertools.product(*(naive_starts(n, p, s) for n, p, s in zip(vol.shape[1:], patch, stride))):
        sl = tuple(slice(a, a + p) for a, p in zip(corner, patch))
        probs = predict(torch.from_numpy(np.ascontiguousarray(vol[(slice(None), *sl)]))[None]).softmax(1)[0].numpy()
        if score is None:
            score = np.zeros((probs.shape[0], *vol.shape[1:]), np.float32)
            count = np.zeros(vol.shape[1:], np.float32)
        score[(slice(None), *sl)] += probs
        count[sl] += 1
    assert (count > 0).all(), "every voxel is visited"
    labels = (score / count).argmax(0)
    return labels[tuple(slice(lo, lo + n) for (lo, _), n in zip(pad[1:], image.shape[1:]))]


CASES_3D = [((17, 13, 11), (8, 8, 6), (3, 3, 2)),     # non-divisible
            ((5, 9, 4), (8, 8, 6), (3, 3, 2)),        # smaller than the patch on two axes
            ((3, 4, 5), (8, 8, 6), (4, 4, 3)),        # smaller than the patch everywhere
            ((16, 16, 16), (16, 16, 16), (4, 4, 4)),  # exactly the patch
            ((13, 10, 9), (6, 5, 4), (6, 5, 4))]      # stride = patch (no overlap but the last window)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("shape, patch, stride", CASES_3D)
def test_sliding_window_3d_equals_the_naive_loop(channels, shape, patch, stride):
    image = np.random.default_rng(2).random((channels, *shape)).astype(np.float32)
    net = RampNet(3, channels)
    got = SlidingWindow(patch, stride, batch=3)(net, image, CPU)
    assert got.shape == shape and got.dtype == np.uint8
    assert np.array_equal(got, naive_sliding_window(net, image, patch, stride))


@pytest.mark.parametrize("shape, patch, stride", [((30, 23), (12, 10), (5, 4)), ((7, 40), (12, 16), (12, 7))])
def test_sliding_window_2d_equals_the_naive_loop(shape, patch, stride):
    image = np.random.default_rng(4).random((3, *shape)).astype(np.float32)
    net = RampNet(2, 3)
    got = SlidingWindow(patch, stride, batch=2)(net, image, CPU)
    assert got.shape == shape and np.array_equal(got, naive_sliding_window(net, image, patch, stride))
    flipped = image[:, ::-1]  # a negatively strided view is accepted
    assert np.array_equal(SlidingWindow(patch, stride)(net, flipped, CPU),
                          naive_sliding_window(net, np.ascontiguousarray(flipped), patch, stride))


def test_window_starts_are_the_ss_net_placement():
    for size, patch, stride in itertools.product(range(1, 30), range(1, 12), range(1, 12)):
        if stride <= patch:
            assert window_starts(size, patch, stride) == naive_starts(size, patch, stride)


def test_sliding_window_validates_its_inputs():
    with pytest.raises(ValueError, match="stride"):
        SlidingWindow((8, 8, 8), (4, 9, 4))
    with pytest.raises(ValueError, match="3 entries"):
        SlidingWindow((8, 8, 8), (4, 4))
    with pytest.raises(ValueError, match="needs a stride"):
        build_inferer("sliding_window", (112, 112, 80))
    with pytest.raises(ValueError, match=r"image\[None\]"):
        SlidingWindow((8, 8, 8), (4, 4, 4))(conv_net(3, 1), np.zeros((10, 10, 10), np.float32), CPU)
    with pytest.raises(ValueError, match="does not resize"):
        build_inferer("sliding_window", (8, 8, 8), (4, 4, 4), resize="bilinear_logits")


# ------------------------------------------------------------------------------------------ whole image
def threshold_net(x: torch.Tensor) -> torch.Tensor:
    """Identity-like: logits = one-hot of channel 0 > 0.5 (2 classes)."""
    fg = (x[:, 0] > 0.5).float()
    return torch.stack([1 - fg, fg], dim=1)


def blocky_image(rng, h, w, block=8):
    """3 channels; channel 0 piecewise constant on block x block tiles (values away from the 0.5 threshold)."""
    tiles = rng.choice([0.1, 0.9], size=(h // block, w // block))
    image = rng.random((3, h, w)).astype(np.float32)
    image[0] = np.kron(tiles, np.ones((block, block)))
    return image


@pytest.mark.parametrize("resize", ["nearest", "bilinear_logits"])
def test_whole_image_reproduces_a_threshold_map(resize):
    image = blocky_image(np.random.default_rng(5), 32, 48)
    want = (image[0] > 0.5).astype(np.uint8)
    got = WholeImage((64, 96), resize)(threshold_net, image, CPU)
    assert got.shape == (32, 48) and got.dtype == np.uint8
    if resize == "nearest":  # 32 -> 64 -> 32 is exact for zoom order 0
        assert np.array_equal(got, want)
    else:  # bilinear: only pixels next to a label boundary may differ
        boundary = np.zeros_like(want, bool)
        for axis in (0, 1):
            edge = np.diff(want, axis=axis) != 0
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(0, -1), slice(1, None)
            boundary[tuple(lo)] |= edge
            boundary[tuple(hi)] |= edge
        assert want.any() and (~want.astype(bool)).any()
        assert np.array_equal(got[~boundary], want[~boundary])
        assert (got != want).mean() < 0.1


@pytest.mark.parametrize("resize", ["nearest", "bilinear_logits"])
def test_whole_image_returns_the_input_size(resize):
    image = np.random.default_rng(6).random((3, 37, 50)).astype(np.float32)
    got = build_inferer("whole_image", (32, 48), resize=resize)(pointwise_net, image, CPU)
    assert got.shape == (37, 50) and got.dtype == np.uint8 and got.max() <= 2


def test_whole_image_validates_its_inputs():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        WholeImage((32, 32))(pointwise_net, np.zeros((3, 4, 32, 32), np.float32), CPU)
    with pytest.raises(ValueError, match="sliding_window"):
        build_inferer("whole_image", (32, 32, 8))


# ------------------------------------------------------------------------------------------ factory
def test_build_inferer_names_and_errors():
    assert INFERERS.names() == ["slicewise", "sliding_window", "whole_image"]
    slicewise = build_inferer("slicewise", (256,), resize="bilinear_logits")
    assert isinstance(slicewise, SliceWise) and slicewise.patch == (256, 256) and slicewise.resize == "bilinear_logits"
    window = build_inferer("sliding_window", [112, 112, 80], [18, 18, 4])
    assert isinstance(window, SlidingWindow) and window.patch == (112, 112, 80) and window.stride == (18, 18, 4)
    assert isinstance(build_inferer("whole_image", 224), WholeImage)
    with pytest.raises(UnknownNameError, match="slicewise, sliding_window, whole_image"):
        build_inferer("sliding-window", (8, 8, 8), (4, 4, 4))
