import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from medpy.metric import binary

from benchmark.metrics import EmptyMaskError, case_metrics, dice_only


def random_masks(seed: int, shape=(4, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(shape) > 0.7, rng.random(shape) > 0.6


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_metrics_equal_medpy_on_random_masks(seed):
    pred, ref = random_masks(seed)
    got = case_metrics(pred, ref)
    assert got["dice"] == pytest.approx(binary.dc(pred, ref))
    assert got["jaccard"] == pytest.approx(binary.jc(pred, ref))
    assert got["hd95"] == pytest.approx(binary.hd95(pred, ref))
    assert got["asd"] == pytest.approx(binary.asd(pred, ref))
    assert dice_only(pred, ref) == pytest.approx(binary.dc(pred, ref))


def test_spacing_scales_distances():
    pred, ref = random_masks(3)
    vox = case_metrics(pred, ref, spacing=None)
    mm = case_metrics(pred, ref, spacing=(2.0, 2.0, 2.0))
    assert mm["hd95"] == pytest.approx(2 * vox["hd95"]) and mm["dice"] == vox["dice"]


def test_empty_prediction_policies():
    empty, ref = np.zeros((3, 8, 8), bool), np.ones((3, 8, 8), bool)
    assert case_metrics(empty, ref, "zero") == {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    nan = case_metrics(empty, ref, "nan")
    assert nan["dice"] == 0.0 and math.isnan(nan["hd95"]) and math.isnan(nan["asd"])
    with pytest.raises(EmptyMaskError):
        case_metrics(empty, ref, "error")


def test_empty_reference_with_a_prediction_is_not_scored_as_perfect():
    pred, ref = np.ones((2, 5, 5), bool), np.zeros((2, 5, 5), bool)
    got = case_metrics(pred, ref, "zero")
    assert got["dice"] == 0.0 and math.isnan(got["hd95"])


def test_validation_dice_scores_empty_prediction_zero():
    assert dice_only(np.zeros((4, 4)), np.ones((4, 4))) == 0.0
    assert dice_only(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0
