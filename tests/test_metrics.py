import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from medpy.metric import binary
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from benchmark import metrics
from benchmark.metrics import (EmptyMaskError, asd, assd, mask_metrics, case_metrics, dice, dice_only, hd95,
                               jaccard, surface_metrics)


def random_masks(seed: int, shape=(4, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(shape) > 0.7, rng.random(shape) > 0.6


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_metrics_equal_medpy_on_random_masks(seed):
    pred, ref = random_masks(seed)
    got = mask_metrics(pred, ref)
    assert got["dice"] == pytest.approx(binary.dc(pred, ref))
    assert got["jaccard"] == pytest.approx(binary.jc(pred, ref))
    assert got["hd95"] == pytest.approx(binary.hd95(pred, ref))
    assert got["asd"] == pytest.approx(binary.asd(pred, ref))
    assert dice_only(pred, ref) == pytest.approx(binary.dc(pred, ref))


def test_spacing_scales_distances():
    pred, ref = random_masks(3)
    vox = mask_metrics(pred, ref, spacing=None)
    mm = mask_metrics(pred, ref, spacing=(2.0, 2.0, 2.0))
    assert mm["hd95"] == pytest.approx(2 * vox["hd95"]) and mm["dice"] == vox["dice"]


def test_empty_prediction_policies():
    empty, ref = np.zeros((3, 8, 8), bool), np.ones((3, 8, 8), bool)
    assert mask_metrics(empty, ref, "zero_all") == {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    assert mask_metrics(empty, ref, "dice0_hd0") == {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    worst = mask_metrics(empty, ref, "worst")
    assert worst["dice"] == 0.0 and worst["hd95"] == worst["asd"] == pytest.approx(math.sqrt(9 + 64 + 64))
    mm = mask_metrics(empty, ref, "worst", spacing=(10.0, 1.5, 1.5))
    assert mm["hd95"] == pytest.approx(math.sqrt(30 ** 2 + 12 ** 2 + 12 ** 2))
    nan = mask_metrics(np.ones((3, 8, 8), bool), np.zeros((3, 8, 8), bool), "zero_all")
    assert nan["dice"] == 0.0 and math.isnan(nan["hd95"]) and math.isnan(nan["asd"])
    with pytest.raises(EmptyMaskError):
        mask_metrics(empty, ref, "error")


def test_empty_reference_with_a_prediction_is_not_scored_as_perfect():
    pred, ref = np.ones((2, 5, 5), bool), np.zeros((2, 5, 5), bool)
    got = mask_metrics(pred, ref, "zero_all")
    assert got["dice"] == 0.0 and math.isnan(got["hd95"])


def test_validation_dice_scores_empty_prediction_zero():
    assert dice_only(np.zeros((4, 4)), np.ones((4, 4))) == 0.0
    assert dice_only(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0


# ------------------------------------------------------------------ the fast path against medpy, bit for bit

def _mask(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    m = np.zeros(shape, bool)
    if kind == "random":
        m = rng.random(shape) < rng.uniform(0.05, 0.9)
    elif kind == "single":  # one voxel, often on the border or in a corner
        m[tuple(int(rng.choice([0, n - 1, rng.integers(n)])) for n in shape)] = True
    elif kind == "full":  # every voxel: the surface is the array's outer shell
        m[...] = True
    elif kind in ("box", "low", "high"):  # a box; low/high halves make pred and ref disjoint when possible
        lo, hi = [], []
        for n in shape:
            a, b = sorted(rng.integers(0, n + 1, 2))
            if kind == "low":
                a, b = min(a, max(n // 2 - 1, 0)), min(b, max(n // 2, 1))
            elif kind == "high":
                a, b = max(a, n // 2), max(b, n // 2 + 1)
            lo.append(min(a, n - 1))
            hi.append(max(b, min(a, n - 1) + 1))
        m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    if not m.any():
        m[tuple(int(rng.integers(n)) for n in shape)] = True
    return m


KINDS = ("random", "single", "full", "box", "low", "high")
DYADIC = st.integers(1, 40).map(lambda k: k / 8)  # 0.125 .. 5: exact grid -> the k-d tree path


@st.composite
def mask_pairs(draw, ndim: int):
    shape = tuple(draw(st.integers(1, 12 if (ndim == 3 and i == 0) else 20)) for i in range(ndim))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    pk, rk = draw(st.sampled_from(KINDS)), draw(st.sampled_from(KINDS))
    if {pk, rk} == {"low", "high"} or draw(st.booleans()):
        pred, ref = _mask(rng, shape, pk), _mask(rng, shape, rk)
    else:  # a perturbed copy, the realistic case
        ref = _mask(rng, shape, rk)
        pred = ref ^ (rng.random(shape) < draw(st.sampled_from([0.02, 0.1, 0.3])))
        if not pred.any():
            pred = ref.copy()
    floats = st.floats(0.05, 5.0, allow_nan=False, allow_infinity=False)
    spacing = draw(st.one_of(
        st.none(),
        floats,                                                    # one value for every axis
        st.tuples(*[floats] * ndim),                               # arbitrary anisotropic
        st.tuples(floats, *[st.just(0.7)] * (ndim - 1)),           # equal in-plane spacing: many exact ties
        st.tuples(*[DYADIC] * ndim),                               # binary fractions: exact arithmetic
    ))
    return pred, ref, spacing


def _medpy(pred, ref, spacing):
    return {"hd95": binary.hd95(pred, ref, voxelspacing=spacing), "asd": binary.asd(pred, ref, voxelspacing=spacing),
            "assd": binary.assd(pred, ref, voxelspacing=spacing), "dice": binary.dc(pred, ref),
            "jaccard": binary.jc(pred, ref)}


def _check_against_medpy(pred, ref, spacing):
    want = _medpy(pred, ref, spacing)
    got = {**surface_metrics(pred, ref, spacing), "dice": dice(pred, ref), "jaccard": jaccard(pred, ref)}
    assert got == {m: float(v) for m, v in want.items()}  # exactly, not approximately
    assert hd95(pred, ref, spacing) == want["hd95"] and asd(pred, ref, spacing) == want["asd"]
    assert assd(pred, ref, spacing) == want["assd"]
    cm = mask_metrics(pred, ref, "error", spacing, ("dice", "jaccard", "hd95", "asd", "assd"))
    assert cm == got


SETTINGS = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(mask_pairs(3))
def test_3d_equals_medpy_exactly(case):
    _check_against_medpy(*case)


@SETTINGS
@given(mask_pairs(2))
def test_2d_equals_medpy_exactly(case):
    _check_against_medpy(*case)


@settings(deadline=None, max_examples=150)
@given(mask_pairs(3))
def test_crop_and_method_do_not_change_the_distances(case):
    pred, ref, spacing = case
    full_edt = metrics._surface_distances(pred, ref, spacing, crop=False, method="edt")
    # medpy's own step, uncropped: the EDT of the whole array read at the surface
    fp = generate_binary_structure(pred.ndim, 1)
    ps, rs = pred ^ binary_erosion(pred, fp), ref ^ binary_erosion(ref, fp)
    assert np.array_equal(full_edt[0], distance_transform_edt(~rs, sampling=spacing)[ps])
    assert np.array_equal(full_edt[1], distance_transform_edt(~ps, sampling=spacing)[rs])
    variants = [dict(crop=True, method="edt")]
    if metrics._exact_scales(metrics._spacing(spacing, pred.ndim), pred.shape) is not None:
        variants += [dict(crop=True, method="kdtree"), dict(crop=False, method="kdtree")]
    for kw in variants:
        got = metrics._surface_distances(pred, ref, spacing, **kw)
        assert np.array_equal(got[0], full_edt[0]) and np.array_equal(got[1], full_edt[1]), kw


@settings(deadline=None, max_examples=100)
@given(mask_pairs(3))
def test_surface_is_mask_xor_scipy_erosion(case):
    for m in case[:2]:
        want = m ^ binary_erosion(m, structure=generate_binary_structure(m.ndim, 1), iterations=1)
        assert np.array_equal(metrics._surface(m), want)


def test_hand_made_cases():
    single = np.zeros((5, 6, 7), bool)
    single[0, 0, 0] = True
    other = np.zeros_like(single)
    other[4, 5, 6] = True
    _check_against_medpy(single, other, None)  # disjoint single voxels in opposite corners
    assert hd95(single, other) == pytest.approx(math.sqrt(16 + 25 + 36))
    _check_against_medpy(single, single, (2.5, 0.7, 0.7))
    assert surface_metrics(single, single) == {"hd95": 0.0, "asd": 0.0, "assd": 0.0}
    full = np.ones_like(single)  # touches every border
    _check_against_medpy(full, single, (1.0, 0.3, 3.3))
    _check_against_medpy(np.ones(7, bool), np.eye(1, 7, 3, dtype=bool)[0], None)  # 1-D works too


def test_assd_is_medpy_pooled_mean_not_mean_of_the_two_asds():
    pred, ref = np.zeros((9, 9), bool), np.zeros((9, 9), bool)
    pred[2:7, 2:7] = True
    ref[4, 4] = True  # 16 pred surface voxels, 1 ref surface voxel
    d_pr, d_rp = metrics._surface_distances(pred, ref)
    assert assd(pred, ref) == float(np.concatenate([d_pr, d_rp]).mean()) == binary.assd(pred, ref)
    assert assd(pred, ref) != pytest.approx((asd(pred, ref) + asd(ref, pred)) / 2)


def test_0_1_integer_masks_are_accepted():
    pred, ref = random_masks(5)
    assert surface_metrics(pred.astype(np.uint8), ref.astype(int)) == surface_metrics(pred, ref)
    assert dice(pred.astype(np.uint8), ref) == binary.dc(pred, ref)


# ------------------------------------------------------------------ empty masks, policies, class maps

@pytest.mark.parametrize("fn", [hd95, asd, assd, surface_metrics])
def test_empty_masks_raise_empty_mask_error(fn):
    some, none = np.ones((3, 4, 4), bool), np.zeros((3, 4, 4), bool)
    for p, r in [(none, some), (some, none), (none, none)]:
        with pytest.raises(EmptyMaskError):
            fn(p, r)
    assert issubclass(EmptyMaskError, ValueError)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # medpy's own 0/0
def test_overlap_of_two_empty_masks_as_medpy_but_policies_apply_in_mask_metrics():
    none = np.zeros((3, 4), bool)
    assert math.isnan(dice(none, none)) and math.isnan(binary.dc(none, none))  # medpy: numpy 0/0
    assert jaccard(none, none) == binary.jc(none, none) == 1.0  # medpy: caught ZeroDivisionError
    assert mask_metrics(none, none, "zero_all") == {m: 0.0 for m in metrics.METRICS}
    assert all(math.isnan(v) for v in mask_metrics(none, none, "worst").values())


def test_case_metrics_keeps_the_requested_order_and_rejects_unknown_metrics():
    pred, ref = random_masks(7)
    assert list(mask_metrics(pred, ref, which=("asd", "dice"))) == ["asd", "dice"]
    with pytest.raises(KeyError):
        mask_metrics(pred, ref, which=("dice", "hd100"))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        surface_metrics(np.ones((3, 4), bool), np.ones((4, 3), bool))


@pytest.mark.parametrize("policy", ["worst", "zero_all"])
@pytest.mark.parametrize("spacing", [None, (1.5, 0.7, 0.7)])
def test_case_metrics_equals_per_class_mask_metrics(policy, spacing):
    rng = np.random.default_rng(11)
    ref = rng.integers(0, 3, (6, 16, 16))
    pred = np.where(rng.random(ref.shape) < 0.2, rng.integers(0, 3, ref.shape), ref)
    pred[pred == 2] = 0  # class 2 predicted nowhere: the empty policy applies
    ref[0, 0, 0] = 4  # class 4 only in the reference, class 3 nowhere
    classes = [1, 2, 3, 4]
    got = case_metrics(pred, ref, classes, spacing=spacing, policy=policy)
    assert list(got) == classes
    for c in classes:
        want = mask_metrics(pred == c, ref == c, policy, spacing)
        assert got[c].keys() == want.keys()
        assert all(got[c][m] == want[m] or (math.isnan(got[c][m]) and math.isnan(want[m])) for m in want)
    with pytest.raises(EmptyMaskError):
        case_metrics(pred, ref, classes, policy="error")


def test_exact_scales():
    assert metrics._exact_scales(None, (88, 576, 576)).tolist() == [1, 1, 1]
    assert metrics._exact_scales(np.array([2.5, 0.625, 0.625]), (88, 576, 576)).tolist() == [20, 5, 5]
    assert metrics._exact_scales(np.array([2.5, 0.7, 0.7]), (88, 576, 576)) is None
    assert metrics._exact_scales(np.array([2.0, 4.0]), (8, 8)).tolist() == [1, 2]
    assert metrics._exact_scales(None, (10 ** 6, 10 ** 6, 10 ** 6)) is None  # sums of squares would round


def test_metrics_module_does_not_import_medpy():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(metrics))
    names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any("medpy" in (x or "") for x in names | modules)


@settings(deadline=None, max_examples=60)
@given(mask_pairs(3))
def test_kdtree_alone_and_rings_alone_agree_with_the_edt(case):
    pred, ref, spacing = case
    if metrics._exact_scales(metrics._spacing(spacing, pred.ndim), pred.shape) is None:
        spacing = None
    want = metrics._surface_distances(pred, ref, spacing, method="edt")
    no_rings = lambda scales: ((), (0,) * len(scales))  # noqa: E731
    with mock.patch.object(metrics, "_rings", no_rings):  # every voxel through the k-d tree
        tree_only = metrics._surface_distances(pred, ref, spacing, method="kdtree")
    with mock.patch.object(metrics, "_RING_MIN_YIELD", 0):  # the rings never give up early
        rings_first = metrics._surface_distances(pred, ref, spacing, method="kdtree")
    for got in (tree_only, rings_first):
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_worst_policy_scores_false_positives_on_an_absent_class_at_the_diagonal():
    pred, ref = np.zeros((4, 6, 6), bool), np.zeros((4, 6, 6), bool)
    pred[1, 2, 2] = True
    got = mask_metrics(pred, ref, "worst")
    assert got["dice"] == 0.0 and got["hd95"] == pytest.approx(math.sqrt(16 + 36 + 36))


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="valid: worst, zero_all, dice0_hd0, error"):
        mask_metrics(np.zeros((3, 3), bool), np.ones((3, 3), bool), "ignore")
