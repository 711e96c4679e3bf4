"""DK-UXNet the method: info_nce against hand arithmetic, the voxel-level dual contrast = info_nce at every voxel,
the intensity-only strong view, the released group log-loss, config errors by field, gradients into the queries
and the cluster classifier, labeled-only presets that draw no unlabeled images, a 3-step Trainer run per preset."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmark.config import ConfigError
from benchmark.losses import dice_loss_per_sample, info_nce
from methods.base import METHODS, Labeled
from methods.dk_uxnet import (DKUXNet, DKUXNetConfig, dual_view_contrast, group_log_loss, pair_index,
                              strong_view)
from tests.method_helpers import SMOKE_3D, method_ctx_3d, smoke_run_3d, tiny_volumes

TINY = {"feature_size": 4, "hidden_size": 16, "num_queries": 8, "query_dim": 16, "query_groups": (4, 4)}
TINY_RELEASED = {**TINY, "query_groups": (2, 2, 4)}   # the released layout's 3 groups
PATCH = (16, 16, 32)                 # the smallest patch whose 1/16 level has > 1 voxel (instance norm)
PAPER_BATCH = {"batch_size": 2, "labeled_batch_size": 1, "patch_size": PATCH}   # 2 samples x 2 views = batch 4


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared CPU the 3D depthwise-conv backward is ~8x faster than with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(preset: str | None = None, **overrides) -> DKUXNetConfig:
    values = dict(DKUXNet.presets[preset]) if preset else {}
    net = TINY_RELEASED if values.get("layout") == "released" else TINY
    return DKUXNet.make_config({**values, **net, **overrides}, "test")


def needs_net() -> None:
    from benchmark.nets import NETWORKS
    if "dk-uxnet" not in NETWORKS:
        pytest.skip("the dk-uxnet network is not registered yet")


# ------------------------------------------------------------------------------------------------ info_nce
def test_info_nce_equals_the_hand_computed_value_on_four_vectors():
    """z0 = (1, 0), z1 = (0, 1), z2 = (2, 2), z3 = (-1, 0); positives 0<->2, 1<->3; tau = 0.5.
    Cosines: c01 = 0, c02 = 1/sqrt2, c03 = -1, c12 = 1/sqrt2, c13 = 0, c23 = -1/sqrt2; logits = c / 0.5, r = sqrt2.
    anchor 0: log(e^0 + e^r + e^-2) - r; anchor 1: log(e^0 + e^r + e^0) - 0;
    anchor 2: log(e^r + e^r + e^-r) - r;  anchor 3: log(e^-2 + e^0 + e^-r) - 0."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]])
    r, e = math.sqrt(2), math.exp
    expected = [math.log(1 + e(r) + e(-2)) - r, math.log(2 + e(r)), math.log(2 * e(r) + e(-r)) - r,
                math.log(e(-2) + 1 + e(-r))]
    per_anchor = info_nce(z, [2, 3, 0, 1], tau=0.5, reduction="none")
    assert torch.allclose(per_anchor, torch.tensor(expected), atol=1e-6)
    assert math.isclose(info_nce(z, [2, 3, 0, 1], tau=0.5).item(), sum(expected) / 4, abs_tol=1e-6)
    assert math.isclose(sum(expected) / 4, 0.774359, abs_tol=1e-5)   # the same arithmetic, evaluated
    # cosine: scaling any vector changes nothing; batched sets are independent
    assert torch.allclose(info_nce(z * torch.tensor([[3.0], [0.5], [1.0], [7.0]]), [2, 3, 0, 1], 0.5, "none"),
                          per_anchor, atol=1e-6)
    stacked = info_nce(torch.stack([z, z.flip(0)]), [2, 3, 0, 1], 0.5, "none")
    assert torch.allclose(stacked[0], per_anchor, atol=1e-6)
    assert torch.allclose(stacked[1], info_nce(z.flip(0), [2, 3, 0, 1], 0.5, "none"), atol=1e-6)


def test_info_nce_rejects_a_self_positive_and_a_bad_temperature():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="positive_index"):
        info_nce(z, [0, 3, 0, 1], 0.1)
    with pytest.raises(ValueError, match="positive_index"):
        info_nce(z, [2, 3, 0], 0.1)
    with pytest.raises(ValueError, match="tau"):
        info_nce(z, [2, 3, 0, 1], 0.0)


def test_voxel_contrast_is_info_nce_at_every_voxel_averaged_over_voxels():
    g = torch.Generator().manual_seed(0)
    for views, channels in ((4, 2), (6, 3)):
        z = torch.rand(views, channels, 3, 2, 4, generator=g)
        per_view = dual_view_contrast(z, tau=0.2, contrast="voxel")
        voxels = [info_nce(z[:, :, d, h, w], pair_index(views), 0.2, "none")
                  for d in range(3) for h in range(2) for w in range(4)]
        assert per_view.shape == (views,)
        assert torch.allclose(per_view, torch.stack(voxels).mean(0), atol=1e-6)
        # sample level: one vector per view; Eq. 4 literally divides it by HWD
        whole = info_nce(z.flatten(1), pair_index(views), 0.2, "none")
        assert torch.allclose(dual_view_contrast(z, 0.2, "sample"), whole, atol=1e-6)
        assert torch.allclose(dual_view_contrast(z, 0.2, "sample", literal_hwd=True), whole / 24, atol=1e-7)
    assert pair_index(4) == [2, 3, 0, 1]


def test_identical_views_give_a_lower_contrast_loss_than_unrelated_ones():
    g = torch.Generator().manual_seed(1)
    weak = torch.rand(2, 2, 4, 4, 4, generator=g).softmax(1)
    aligned = dual_view_contrast(torch.cat([weak, weak]), 0.1).mean()
    shuffled = dual_view_contrast(torch.cat([weak, weak.flip(0)]), 0.1).mean()
    assert aligned < shuffled


# ------------------------------------------------------------------------------------------------ views
def test_strong_view_keeps_shapes_and_changes_intensities_only():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 16, 16, 16, generator=g)
    on = DKUXNetConfig(noise_p=1.0, blur_p=1.0, jitter_p=1.0)
    y = strong_view(x, on, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype and not torch.allclose(y, x)
    # no geometry: a single bright voxel stays the brightest voxel, in place
    delta = torch.zeros(2, 1, 16, 16, 16)
    delta[0, 0, 3, 9, 12] = delta[1, 0, 10, 2, 5] = 50.0
    moved = strong_view(delta, dataclasses.replace(on, noise_std=0.01), torch.Generator().manual_seed(2))
    assert moved.flatten(1).argmax(1).tolist() == delta.flatten(1).argmax(1).tolist()
    # without noise and blur it is an affine map of each sample's intensities (brightness x, contrast about mean)
    jitter_only = DKUXNetConfig(noise_p=0.0, blur_p=0.0, jitter_p=1.0)
    y = strong_view(x, jitter_only, torch.Generator().manual_seed(3))
    for i in range(3):
        a = torch.stack([x[i].flatten(), torch.ones(x[i].numel())], 1)
        coef = torch.linalg.lstsq(a, y[i].flatten()[:, None]).solution
        assert torch.allclose(a @ coef, y[i].flatten()[:, None], atol=1e-4)
        assert 0.75 ** 2 - 1e-4 <= coef[0].item() <= 1.25 ** 2 + 1e-4   # brightness x contrast factors
    off = DKUXNetConfig(noise_p=0.0, blur_p=0.0, jitter_p=0.0)
    assert torch.equal(strong_view(x, off), x)


# ------------------------------------------------------------------------------------------------ losses
def test_group_log_loss_is_the_unnormalised_sum_over_voxels_with_labels_clamped():
    q = torch.tensor([[0.5, 0.25], [0.3, 0.25], [0.2, 0.5]])[None, :, :, None]   # (1, G=3, 2, 1)
    y = torch.tensor([[[0], [3]]])                                                # label 3 -> group 2
    expected = -(math.log(0.5) + math.log(0.5))
    assert math.isclose(group_log_loss(q, y).item(), expected, rel_tol=1e-6)
    assert math.isclose(group_log_loss(q, y, reduction="mean").item(), expected / 2, rel_tol=1e-6)


def test_released_supervised_loss_is_monai_dice_ce():
    monai = pytest.importorskip("monai")
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(2, 2, 6, 6, 6, generator=g), torch.randint(0, 2, (2, 6, 6, 6), generator=g)
    ours = torch.nn.functional.cross_entropy(logits, y) + dice_loss_per_sample(logits.softmax(1), y)
    ref = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)(logits, y[:, None])
    assert torch.allclose(ours, ref, atol=1e-5)


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("overrides, field", [
    ({"num_queries": 8, "query_groups": (3, 3)}, "query_groups"),
    ({"tau": 0.0}, "tau"), ({"tau": -1.0}, "tau"),
    ({"contrast": "pixel"}, "contrast"), ({"q_source": "cls"}, "q_source"), ({"seg_output": "mlp"}, "seg_output"),
    ({"lambda_dc": -0.1}, "lambda_dc"), ({"blur_p": 1.5}, "blur_p"), ({"layout": "other"}, "layout"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        DKUXNet.make_config(overrides, "test")


def test_check_asks_for_negatives_and_for_unlabeled_images_only_when_drawn():
    train = dataclasses.replace(SMOKE_3D, **PAPER_BATCH)
    DKUXNet.check(tiny_config(), train, "suite")                          # 1 + 1: pooled negatives exist
    with pytest.raises(ConfigError, match="same_kind"):
        DKUXNet.check(tiny_config(dc_negatives="same_kind"), train, "suite")
    labeled_only = dataclasses.replace(SMOKE_3D, batch_size=2, labeled_batch_size=2)
    with pytest.raises(ConfigError, match="unlabeled"):
        DKUXNet.check(tiny_config(), labeled_only, "suite")
    for preset in ("supervised", "seg-only", "released"):
        DKUXNet.check(tiny_config(preset), labeled_only, "suite")
        assert not DKUXNet.draws_unlabeled(tiny_config(preset))
    assert DKUXNet.draws_unlabeled(tiny_config("qdc")) and DKUXNet.draws_unlabeled(tiny_config())


def test_a_suite_with_every_row_labeled_expands_for_the_labeled_only_presets_only():
    from benchmark import catalog
    from benchmark.run.trials import expand

    demo = catalog.get_suite("demo-3d")   # synthetic-la: 12 training volumes
    suite = dataclasses.replace(demo, methods=("dk-uxnet:supervised",), labeled=(12,),
                                train={**demo.train, "batch_size": 2, "labeled_batch_size": 1})
    assert [t.method for t in expand(suite, seeds=[0])] == ["dk-uxnet:supervised"]
    with pytest.raises(ConfigError, match="dk-uxnet needs unlabeled data"):
        expand(dataclasses.replace(suite, methods=("dk-uxnet",)), seeds=[0])


def test_registration_and_presets():
    assert METHODS.get("dk-uxnet") is DKUXNet
    assert DKUXNet.dims == (3,) and DKUXNet.networks == ("vnet",)
    assert set(DKUXNet.presets) >= {"seg-only", "qdc", "segc", "full", "supervised", "released"}
    rows = {p: (c.segc, c.qdc) for p in ("seg-only", "qdc", "segc", "full") for c in [tiny_config(p)]}
    assert rows == {"seg-only": (False, False), "qdc": (False, True), "segc": (True, False), "full": (True, True)}
    for preset in DKUXNet.presets:
        tiny_config(preset)   # every preset builds a valid config


# ------------------------------------------------------------------------------------------------ with the net
def test_one_step_sends_gradients_to_the_queries_and_the_cluster_classifier():
    needs_net()
    torch.manual_seed(0)
    method = DKUXNet(tiny_config(), method_ctx_3d(iterations=10, lr=0.01, patch=PATCH))
    labeled, unlabeled = tiny_volumes(1, 1, PATCH)
    out = method.train_step(labeled, unlabeled, 0)
    assert {"loss", "loss_sup", "loss_segc", "loss_qdc", "loss_dc_l", "loss_dc_u"} <= set(out)
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in out.values())
    assert out["loss_dc_u"] > 0   # the unlabeled anchors contrast against the labeled sample's views
    grads = {name: p.grad for name, p in method.net.named_parameters()}
    queries = [g for n, g in grads.items() if "cluster_centers" in n]
    classifier = [g for n, g in grads.items() if "classifier" in n]
    assert queries and classifier
    assert all(g is not None and g.abs().sum() > 0 for g in queries + classifier)
    method.train(False)
    with torch.no_grad():
        logits = method.predict(labeled.image)
    assert logits.shape == (1, 2, *PATCH)


def test_view_chunks_give_the_gradient_of_the_one_loss_over_per_chunk_forwards():
    """view_chunk 2 (gradient caching) = forwarding each chunk with its graph, one loss over all views, one
    backward: the same loss, gradients and BatchNorm statistics (counted once, not twice)."""
    needs_net()
    from methods.dk_uxnet import strong_view
    labeled, unlabeled = tiny_volumes(1, 1, PATCH)
    ctx = method_ctx_3d(iterations=10, lr=0.01, patch=PATCH)
    torch.manual_seed(0)
    chunked = DKUXNet(tiny_config(view_chunk=2), ctx)
    torch.manual_seed(0)
    reference = DKUXNet(tiny_config(), ctx)
    torch.manual_seed(1)
    out = chunked.train_step(labeled, unlabeled, 0)
    torch.manual_seed(1)
    x = torch.cat([labeled.image, unlabeled])
    views = torch.cat([x, strong_view(x, reference.cfg)])          # [weak_l, weak_u, strong_l, strong_u]
    outputs = [reference.forward(chunk) for chunk in views.split(2)]
    seg, q = (torch.cat(parts) for parts in zip(*outputs))
    y = labeled.label
    loss, _ = reference.losses(seg, q, [0, 2], torch.cat([y, y]), [0, 2], [1, 3])
    loss.backward()
    assert torch.allclose(out["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    ours, theirs = dict(chunked.net.named_parameters()), dict(reference.net.named_parameters())
    assert all((ours[k].grad is None) == (theirs[k].grad is None) for k in ours)
    for k, p in theirs.items():
        if p.grad is not None:
            assert torch.allclose(ours[k].grad, p.grad, rtol=1e-4, atol=1e-6), k
    buffers = dict(reference.net.named_buffers())
    for k, b in chunked.net.named_buffers():
        assert torch.allclose(b.float(), buffers[k].float(), rtol=1e-5, atol=1e-7), k


def test_lambda_dc_adds_the_dual_contrast_to_the_supervised_loss():
    """lambda_dc 0: the loss is L_sup alone; lambda_dc 1: L_sup + L_dc (InfoNCE > 0)."""
    needs_net()
    labeled, unlabeled = tiny_volumes(1, 1, PATCH)
    losses = []
    for lam in (0.0, 1.0):
        torch.manual_seed(0)
        method = DKUXNet(tiny_config(lambda_dc=lam), method_ctx_3d(iterations=10, lr=0.01, patch=PATCH))
        losses.append(method.train_step(labeled, unlabeled, 0))
    assert torch.allclose(losses[0]["loss"], losses[0]["loss_sup"])
    assert losses[1]["loss"] > losses[1]["loss_sup"]


def test_supervised_preset_trains_with_every_row_labeled_and_no_unlabeled_images(tmp_path):
    needs_net()
    from benchmark import catalog
    from benchmark.data.dataset import load_dataset
    from benchmark.train import Trainer

    card = catalog.get_card("synthetic-la")
    data = load_dataset(card)
    seen = []
    train = dataclasses.replace(SMOKE_3D, iterations=2, **PAPER_BATCH)
    trainer = Trainer(data, DKUXNet, tiny_config("supervised"), train, len(data.train_images), 0, tmp_path,
                      card.evaluation, card.classes, device="cpu", progress=False, test_cases=1)
    step = trainer.method.train_step

    def spy(labeled: Labeled, unlabeled, local):
        seen.append((labeled.image.shape[0], unlabeled))
        return step(labeled, unlabeled, local)

    trainer.method.train_step = spy
    trainer.fit()
    assert seen == [(2, None), (2, None)]   # the whole batch labeled, nothing unlabeled drawn
    with pytest.raises(ValueError, match="unlabeled"):
        Trainer(data, DKUXNet, tiny_config("full"), train, len(data.train_images), 0, tmp_path / "full",
                card.evaluation, card.classes, device="cpu", progress=False)


@pytest.mark.parametrize("preset", ["seg-only", "qdc", "segc", "full", "supervised", "released"])
def test_three_trainer_steps_per_preset(tmp_path, preset):
    needs_net()
    rec = smoke_run_3d(tmp_path, f"dk-uxnet:{preset}", tiny_config(preset), **PAPER_BATCH)
    logged = set(rec.train[1])
    assert ("train/loss_qdc" in logged) == tiny_config(preset).qdc
    assert ("train/loss_segc" in logged) == tiny_config(preset).segc
    assert ("train/loss_query" in logged) == (preset == "released")
