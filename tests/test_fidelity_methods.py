"""Issue 19, items 2-5: SS-Net's memory weights, FixMatch's views and CutMix labels, BCP's pre-fix masked Dice,
and the supervised sampler's last partial batch; each checked against values derived here independently."""
import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark import catalog
from benchmark.config import ConfigError, TrainConfig
from benchmark.data.sampling import TwoStreamSchedule
from benchmark.losses import one_hot
from benchmark.nets.vnet_variants import SSNetHeads
from methods.bcp import BCP, BCPConfig, region_dice
from methods.fixmatch import FixMatch, FixMatchConfig, derangement, ssl4mis_rot_flip, weak_view
from methods.ssnet import SSNet, SSNetConfig, memory_entry_weights, separation_loss
from method_helpers import method_ctx, method_ctx_3d, tiny_batch, tiny_volumes


# ------------------------------------------------------------------------------------------- SS-Net
def test_the_reference_rescaling_of_memory_weights_is_one_with_no_gradient():
    """SS-Net contrastive_losses.py L60-62: sigmoid scores (M, 1) transposed to (1, M), then multiplied by
    shape[0] / sum over dim 0; shape[0] is 1 and the sum over a length-1 axis is the score itself."""
    torch.manual_seed(0)
    scores = torch.randn(32, 1, requires_grad=True)
    v = torch.sigmoid(scores).T
    rescaled = v * (v.shape[0] / v.sum(dim=0))
    torch.testing.assert_close(rescaled, torch.ones(1, 32), atol=1e-6, rtol=0)
    (rescaled * torch.randn(1, 32)).sum().backward()
    assert scores.grad.abs().max() < 1e-6
    heads = SSNetHeads(4)
    entries = torch.randn(32, 32)
    assert torch.equal(memory_entry_weights(heads, 1, entries), torch.ones(1, 32))    # the default: exactly 1


def _heads_and_inputs(seed: int = 0):
    torch.manual_seed(seed)
    heads = SSNetHeads(3)
    memory = [None, torch.randn(6, 32), torch.randn(5, 32)]
    features = torch.randn(20, 32, requires_grad=True)
    labels = torch.tensor([0] * 4 + [1] * 8 + [2] * 8)
    return heads, memory, features, labels


def test_default_separation_weights_the_memory_uniformly_and_never_runs_the_memory_selectors():
    heads, memory, features, labels = _heads_and_inputs()
    loss = separation_loss(features, labels, memory, heads)
    expected = 0.0
    for c in (1, 2):                                    # hand-written: w rescaled to mean 1, memory weight 1
        f = features[labels == c]
        d = 1 - F.normalize(f, dim=1) @ F.normalize(memory[c], dim=1).T
        w = torch.sigmoid(heads.selectors[c](f.detach()))
        expected = expected + (d * w / w.mean()).mean()
    torch.testing.assert_close(loss, expected / 3)
    loss.backward()
    assert all(p.grad is None for p in heads.memory_selectors.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.selectors.parameters())
    for p in heads.memory_selectors.parameters():       # the memory selectors do not enter the loss at all
        nn.init.normal_(p)
    torch.testing.assert_close(separation_loss(features, labels, memory, heads), loss.detach())


def test_learned_memory_weights_are_uneven_trained_and_score_the_normalised_entries():
    heads, memory, features, labels = _heads_and_inputs()
    v = memory_entry_weights(heads, 1, memory[1], "learned")
    assert v.shape == (1, 6) and v.mean().item() == pytest.approx(1.0) and v.std() > 1e-4
    torch.testing.assert_close(memory_entry_weights(heads, 1, memory[1] * 7.0, "learned"), v)  # normalised input
    loss = separation_loss(features, labels, memory, heads, "learned")
    assert not torch.allclose(loss, separation_loss(features, labels, memory, heads))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.memory_selectors.parameters())


def test_ssnet_steps_leave_the_memory_selectors_alone_unless_learned():
    assert catalog.preset_overrides("ss-net:learned-memory-weights") == {"memory_weights": "learned"}
    with pytest.raises(ConfigError, match="memory_weights"):
        SSNetConfig(memory_weights="even")
    labeled, u = tiny_batch(size=16)
    changed = {}
    for mode in ("uniform", "learned"):
        torch.manual_seed(0)
        ssnet = SSNet(SSNetConfig(memory_weights=mode), method_ctx())
        before = [p.clone() for p in ssnet.heads.memory_selectors.parameters()]
        out = ssnet.train_step(labeled, u, step=30000)   # the memory is filled before the separation terms
        assert out["loss_sep_l"].item() > 0
        changed[mode] = any(not torch.equal(a, b) for a, b in zip(before, ssnet.heads.memory_selectors.parameters()))
    assert changed == {"uniform": False, "learned": True}


def test_ssnet_3d_default_leaves_the_vnet_memory_selectors_alone():
    torch.manual_seed(0)
    method = SSNet(SSNetConfig(supervised_dice="binary", vat_distance="binary"), method_ctx_3d())
    before = [p.clone() for p in method.model.heads.memory_selectors.parameters()]
    labeled, u = tiny_volumes(shape=(16, 16, 16))
    method.train_step(labeled, u, step=3000)
    assert method.memory[1] is not None
    assert all(torch.equal(a, b) for a, b in zip(before, method.model.heads.memory_selectors.parameters()))


# ----------------------------------------------------------------------------------------- FixMatch
def test_derangement_never_pairs_an_image_with_itself_and_reaches_every_derangement():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(400):
        perm = derangement(4, g)
        assert sorted(perm.tolist()) == [0, 1, 2, 3] and all(perm[i] != i for i in range(4))
        seen.add(tuple(perm.tolist()))
    assert seen == {p for p in itertools.permutations(range(4)) if all(p[i] != i for i in range(4))}   # all 9
    assert derangement(2, g).tolist() == [1, 0]
    with pytest.raises(ValueError):
        derangement(1, g)


def test_ssl4mis_rot_flip_is_numpys_rot90_then_flip_for_image_and_label():
    x = torch.rand(64, 2, 6, 6)
    label = torch.randint(0, 4, (64, 6, 6))
    out, out_label = ssl4mis_rot_flip(x, label, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    ks, axes = torch.randint(0, 4, (64,), generator=g).tolist(), torch.randint(0, 2, (64,), generator=g).tolist()
    assert set(ks) == {0, 1, 2, 3} and set(axes) == {0, 1}
    for i, (k, a) in enumerate(zip(ks, axes)):       # SSL4MIS random_rot_flip on each (H, W) array
        want = np.stack([np.flip(np.rot90(c, k), axis=a) for c in x[i].numpy()])
        np.testing.assert_array_equal(out[i].numpy(), want)
        np.testing.assert_array_equal(out_label[i].numpy(), np.flip(np.rot90(label[i].numpy(), k), axis=a))
        assert not torch.equal(out[i], x[i])          # always a flip: never the identity


class _Recorder(nn.Module):
    """A BN-free conv net that records what it is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.conv(x)


def test_ssl4mis_variant_trains_on_its_own_rot_flip_view_with_the_labels_moved_alike():
    from benchmark.losses import dice_loss
    torch.manual_seed(0)
    method = FixMatch(FixMatchConfig(variant="ssl4mis"), method_ctx())
    method.model = _Recorder()
    method.optimizer = torch.optim.SGD(method.model.parameters(), lr=0.0)
    labeled, u = tiny_batch(n=2, m=2, size=16)
    torch.manual_seed(5)
    out = method.train_step(labeled, u, 0)
    torch.manual_seed(5)
    weak, label = ssl4mis_rot_flip(torch.cat([labeled.image, u]), labeled.label)
    assert torch.equal(method.model.inputs[0], weak)
    with torch.no_grad():
        logits = method.model.conv(weak[:2])
    expected = F.cross_entropy(logits, label) + dice_loss(logits.softmax(1), label)
    assert out["loss_sup"].item() == pytest.approx(expected.item(), rel=1e-5)
    unmoved = F.cross_entropy(logits, labeled.label) + dice_loss(logits.softmax(1), labeled.label)
    assert out["loss_sup"].item() != pytest.approx(unmoved.item(), rel=1e-3)


def test_check_asks_the_ssl4mis_variant_for_augmentation_none_and_cutmix_for_two_unlabeled():
    plain = TrainConfig(batch_size=4, labeled_batch_size=2, patch_size=32)
    with pytest.raises(ConfigError, match="augmentation: none"):
        FixMatch.check(FixMatchConfig(variant="ssl4mis"), plain, "suite: fixmatch:ssl4mis")
    FixMatch.check(FixMatchConfig(variant="ssl4mis"), TrainConfig(batch_size=4, labeled_batch_size=2, patch_size=32,
                                                                  augmentation="none"), "s")
    with pytest.raises(ConfigError, match="square"):
        FixMatch.check(FixMatchConfig(variant="ssl4mis"),
                       TrainConfig(batch_size=4, labeled_batch_size=2, patch_size=(32, 16), augmentation="none"), "s")
    FixMatch.check(FixMatchConfig(), plain, "s")
    one_unlabeled = TrainConfig(batch_size=3, labeled_batch_size=2, patch_size=32)
    with pytest.raises(ConfigError, match=">= 2"):
        FixMatch.check(FixMatchConfig(), one_unlabeled, "s")
    FixMatch.check(FixMatchConfig(cutmix_p=0.0), one_unlabeled, "s")


def test_fixmatch_has_no_weak_flip_and_semsim_keeps_its_own():
    from methods.semsim import SemSimConfig
    u = torch.rand(3, 1, 8, 8)
    assert FixMatchConfig().weak_flip == 0.0 and torch.equal(weak_view(u, FixMatchConfig()), u)
    assert SemSimConfig().weak_flip == 0.5


def test_cutmix_box_is_labelled_by_an_eval_mode_pass_of_another_image(monkeypatch):
    """UniMatch unimatch.py L129-134, L155-162: inside the box, argmax and confidence come from a no-grad
    eval-mode pass made before the training pass; outside, from the training pass on the weak view."""
    import methods.fixmatch as fm

    torch.manual_seed(0)
    method = FixMatch(FixMatchConfig(tau=0.4, cutmix_p=1.0, colour_p=0.0, blur_p=0.0), method_ctx())
    method.model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4))   # train != eval output
    method.optimizer = torch.optim.SGD(method.model.parameters(), lr=0.0)
    before = copy.deepcopy(method.model)
    labeled, u = tiny_batch(n=2, m=4, size=16)
    seen = {}
    real_loss, real_strong = fm.unsupervised_loss, fm.strong_view
    monkeypatch.setattr(fm, "unsupervised_loss", lambda k, l, p, m: seen.update(pseudo=p, mask=m) or real_loss(k, l, p, m))
    monkeypatch.setattr(fm, "strong_view", lambda w, c, **kw: seen.setdefault("view", real_strong(w, c, **kw)))
    method.train_step(labeled, u, 0)
    view = seen["view"]
    assert all(view.partner[i] != i for i in range(4)) and view.box.any()
    with torch.no_grad():
        p_eval = copy.deepcopy(before).eval()(u).softmax(1)
        p_train = copy.deepcopy(before).train()(torch.cat([labeled.image, u]))[2:].softmax(1)
    conf_e, arg_e = p_eval.max(1)
    conf_t, arg_t = p_train.max(1)
    assert torch.equal(seen["pseudo"], view.mix(arg_t, arg_e))
    assert torch.equal(seen["mask"], view.mix(conf_t >= 0.4, conf_e >= 0.4))
    assert not torch.equal(seen["pseudo"], view.targets(arg_t))     # the train pass would label the box otherwise


# ---------------------------------------------------------------------------------------------- BCP
def _pre_fix_dice(probs, target, region, smooth=1e-10):
    """BCP's DiceLoss before a925e30, written from its rule: class i's mask is (region * i == i), so the
    background's is all ones; per class 1 - (2 sum(m p t) + s) / (sum(m p^2) + sum(m t^2) + s), mean."""
    t = one_hot(target, probs.shape[1])
    terms = []
    for i in range(probs.shape[1]):
        m = (region * i == i).float()
        inter = (m * probs[:, i] * t[:, i]).sum()
        terms.append(1 - (2 * inter + smooth) / ((m * probs[:, i] ** 2).sum() + (m * t[:, i] ** 2).sum() + smooth))
    return torch.stack(terms).mean()


def test_paper_era_dice_is_the_pre_fix_rule_and_differs_from_the_fixed_one():
    torch.manual_seed(0)
    probs = torch.rand(2, 4, 8, 8).softmax(1)
    target = torch.randint(0, 4, (2, 8, 8))
    region = torch.zeros(2, 8, 8)
    region[:, 2:6, 1:5] = 1
    whole = region_dice(probs, target, region, 1e-10, "ssl4mis", "whole")
    torch.testing.assert_close(whole, _pre_fix_dice(probs, target, region))
    masked = region_dice(probs, target, region, 1e-10)
    assert not torch.allclose(whole, masked)
    ones = torch.ones(2, 8, 8)                         # a full region: both rules agree
    torch.testing.assert_close(region_dice(probs, target, ones, 1e-10, "ssl4mis", "whole"),
                               region_dice(probs, target, ones, 1e-10))


def test_paper_era_preset_changes_only_the_dice_of_a_bcp_step():
    assert catalog.preset_overrides("bcp:paper-era") == {"background_dice": "whole"}
    with pytest.raises(ConfigError, match="per_sample"):
        BCPConfig(background_dice="whole", dice="per_sample")
    with pytest.raises(ConfigError, match="background_dice"):
        BCPConfig(background_dice="none")
    labeled, _ = tiny_batch(n=4, m=0, size=16)
    outs = {}
    for name in ("bcp", "bcp:paper-era"):
        torch.manual_seed(0)
        method = BCP(BCPConfig(**catalog.preset_overrides(name)), method_ctx())
        outs[name] = method.train_step(labeled, None, 0)   # pre-training (BCP starts in that stage)
    assert outs["bcp"]["loss_ce"].item() == pytest.approx(outs["bcp:paper-era"]["loss_ce"].item())
    assert outs["bcp"]["loss_dice"].item() != pytest.approx(outs["bcp:paper-era"]["loss_dice"].item(), rel=1e-4)


# --------------------------------------------------------------------------------- supervised sampler
def test_keep_last_partial_is_ssl4mis_fully_supervised_dataloader():
    """68 slices at batch 24: DataLoader(shuffle=True, drop_last=False) gives 24, 24, 20 per epoch."""
    s = TwoStreamSchedule(68, 0, 24, 0, seed=3, keep_last_partial=True)
    assert s.batches_per_epoch == 3 and [len(s.batch(k)) for k in range(4)] == [24, 24, 20, 24]
    for epoch in range(2):
        seen = np.concatenate([s.batch(3 * epoch + k) for k in range(3)])
        assert sorted(seen.tolist()) == list(range(68))
    assert not np.array_equal(s.batch(0), s.batch(3))
    small = TwoStreamSchedule(5, 0, 24, 0, seed=0, keep_last_partial=True)   # fewer than a batch: all 5, once
    assert sorted(small.batch(0).tolist()) == list(range(5))
    with pytest.raises(ValueError, match="labeled-only"):
        TwoStreamSchedule(68, 10, 12, 12, seed=0, keep_last_partial=True)


@pytest.mark.parametrize("n, bs", [(68, 24), (136, 12), (7, 3)])
def test_the_default_still_drops_the_remainder_with_the_same_permutations(n, bs):
    s = TwoStreamSchedule(n, 0, bs, 0, seed=11)
    assert s.batches_per_epoch == n // bs
    for step in range(3 * s.batches_per_epoch):
        epoch, k = divmod(step, s.batches_per_epoch)
        perm = np.random.default_rng([11, 0, epoch]).permutation(n)
        np.testing.assert_array_equal(s.batch(step), perm[k * bs:(k + 1) * bs])


def test_keep_last_partial_batches_train_a_supervised_step():
    """A partial batch is an ordinary, smaller batch for the methods (here: the shapes a Trainer would pass).
    A batch of 1 needs a bottleneck of more than 1 pixel (BatchNorm): 32 px here, 16 x 16 at ACDC's 256."""
    from methods.supervised import Supervised
    method = Supervised(Supervised.Config(), method_ctx())
    for n in (3, 1):
        labeled, _ = tiny_batch(n=n, m=0, size=32)
        out = method.train_step(labeled, None, 0)
        assert torch.isfinite(out["loss"])

