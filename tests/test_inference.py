"""Inference protocols: slicewise resize modes, the 3D sliding window, largest-component post-processing."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from benchmark.config import ConfigError, EvaluationProtocol
from benchmark.evaluate import predict_case
from benchmark.inference import SliceWise, SlidingWindow, window_starts
from benchmark.masks import largest_component, largest_component_per_class

CPU = torch.device("cpu")


def intensity_classifier(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network: class = intensity bucket, as 3-class logits (works in 2D and 3D)."""
    return torch.cat([-(x - c).abs() * 10 for c in (0.0, 0.5, 1.0)], dim=1)


@pytest.mark.parametrize("resize", ["nearest", "bilinear_logits"])
@pytest.mark.parametrize("shape", [(3, 40, 56), (1, 17, 33), (2, 64, 64)])
def test_slicewise_round_trips_shapes(resize, shape):
    image = np.random.default_rng(0).choice([0.0, 0.5, 1.0], size=shape).astype(np.float32)
    labels = SliceWise((32, 32), resize)(intensity_classifier, image[None], CPU)
    assert labels.shape == shape and labels.dtype == np.uint8


def test_slicewise_nearest_recovers_piecewise_constant_images():
    image = np.zeros((2, 64, 64), np.float32)
    image[:, 16:48, 16:48] = 1.0
    labels = SliceWise((32, 32), "nearest")(intensity_classifier, image[None], CPU)
    assert np.array_equal(labels, (image * 2).astype(np.uint8))


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 60), patch=st.integers(1, 20), stride=st.integers(1, 20))
def test_window_starts_cover_the_axis_and_end_flush(size, patch, stride):
    if stride > patch:  # would leave gaps: refused
        with pytest.raises(ValueError, match="stride"):
            window_starts(size, patch, stride)
        return
    starts = window_starts(size, patch, stride)
    covered = np.zeros(max(size, patch), bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered[:size].all()
    assert starts[-1] == max(size - patch, 0) and starts == sorted(set(starts))


def naive_sliding_window(predict, image, patch, stride):
    """The SS-Net loop, written plainly: pad, visit every window, average softmax, argmax, crop."""
    pads = [max(p - s, 0) for p, s in zip(patch, image.shape)]
    pad = [(d // 2, d - d // 2) for d in pads]
    vol = np.pad(image, pad)
    score = np.zeros((3, *vol.shape), np.float32)
    count = np.zeros(vol.shape, np.float32)
    for x in window_starts(vol.shape[0], patch[0], stride[0]):
        for y in window_starts(vol.shape[1], patch[1], stride[1]):
            for z in window_starts(vol.shape[2], patch[2], stride[2]):
                sl = (slice(x, x + patch[0]), slice(y, y + patch[1]), slice(z, z + patch[2]))
                inp = torch.from_numpy(vol[sl].astype(np.float32))[None, None]
                score[(slice(None), *sl)] += predict(inp).softmax(1)[0].numpy()
                count[sl] += 1
    assert (count > 0).all(), "every voxel is visited"
    labels = (score / count).argmax(0)
    return labels[tuple(slice(lo, n - hi) for (lo, hi), n in zip(pad, vol.shape))]


class PositionalNet(torch.nn.Module):
    """Output depends on position inside the window, so overlaps really average different values."""

    def forward(self, x):
        d, h, w = x.shape[2:]
        ramp = torch.linspace(0, 1, w).view(1, 1, 1, 1, w)
        return torch.cat([x * 3, ramp.expand_as(x) * 2, 1 - x], dim=1)


@pytest.mark.parametrize("shape, patch, stride", [((20, 18, 11), (8, 8, 6), (3, 3, 2)), ((5, 9, 4), (8, 8, 6), (3, 3, 2)),
                                                   ((16, 16, 16), (16, 16, 16), (4, 4, 4))])
def test_sliding_window_matches_the_naive_loop(shape, patch, stride):
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    net = PositionalNet()
    got = SlidingWindow(patch, stride, batch=3)(net, image[None], CPU)
    assert got.shape == shape
    assert np.array_equal(got, naive_sliding_window(net, image, patch, stride))


def test_largest_component_keeps_the_biggest_blob():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True          # 4 pixels
    mask[5:9, 5:9] = True          # 16 pixels
    assert largest_component(mask).sum() == 16
    assert largest_component(np.zeros((4, 4), bool)).sum() == 0
    diag = np.eye(4, dtype=bool)   # connected only diagonally: full connectivity keeps all of it
    assert largest_component(diag).sum() == 4 and largest_component(diag, connectivity=1).sum() == 1


def test_largest_component_per_class_removes_stray_voxels():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[5, 5, 5] = 1
    labels[0, 5, 0] = 2
    out = largest_component_per_class(labels, (1, 2))
    assert out[5, 5, 5] == 0 and (out == 1).sum() == 27 and out[0, 5, 0] == 2


def test_predict_case_applies_postprocessing():
    image = np.zeros((1, 32, 32), np.float32)
    image[0, 2:12, 2:12] = 1.0
    image[0, 20, 20] = 1.0
    protocol = EvaluationProtocol(classes=(1, 2), postprocess="largest_component")
    raw = predict_case(intensity_classifier, image[None], EvaluationProtocol(classes=(1, 2)), SliceWise((32, 32)), CPU)
    cleaned = predict_case(intensity_classifier, image[None], protocol, SliceWise((32, 32)), CPU)
    assert raw[0, 20, 20] == 2 and cleaned[0, 20, 20] == 0 and (cleaned == 2).sum() == 100


def test_sliding_window_protocol_needs_patch_and_stride():
    with pytest.raises(ConfigError, match="stride larger than the patch"):
        EvaluationProtocol(inference="sliding_window", patch=(8, 8, 8), stride=(4, 9, 4), classes=(1,)).validate("card", 2, 3)
    with pytest.raises(ConfigError, match="sliding_window needs patch and stride"):
        EvaluationProtocol(inference="sliding_window", patch=(112, 112, 80), classes=(1,)).validate("card", 2, 3)
    EvaluationProtocol(inference="sliding_window", patch=[112, 112, 80], stride=[18, 18, 4], classes=[1]).validate("card", 2, 3)
