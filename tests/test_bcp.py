"""BCP: the copy-paste box helpers, the bidirectional mixes and their region losses on hand-made inputs, the
pseudo-label cleaning, the stage plan, the teacher hand-over + EMA, and a two-stage Trainer smoke run."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from benchmark.losses import dice_loss
from benchmark.mixing import Box, box_mask, paste, sample_box
from benchmark.train import Trainer
from methods.base import METHODS, Labeled, Stage
from methods.bcp import BCP, BCPConfig, Mix, bidirectional_mix, mix_loss, pseudo_labels
from method_helpers import SMOKE, MetricRecorder, method_ctx, tiny_batch
from benchmark.checkpoints import safe_load


# --------------------------------------------------------------------------------------------- mixing
def test_sample_box_has_the_ratio_size_and_never_touches_the_far_border():
    g = torch.Generator().manual_seed(0)
    boxes = [sample_box((12, 9), 2 / 3, g) for _ in range(400)]
    assert {b.size for b in boxes} == {(8, 6)}
    tops, lefts = {b.start[0] for b in boxes}, {b.start[1] for b in boxes}
    assert tops == set(range(0, 4)) and lefts == set(range(0, 3))  # [0, H - h): 12 - 8 = 4 excluded
    assert sample_box((6, 6), 1.0, g) == Box((0, 0), (6, 6))
    with pytest.raises(ValueError):
        sample_box((6, 6), 0.0, g)
    with pytest.raises(ValueError):
        sample_box((2, 2), 0.3, g)


def test_box_mask_and_paste_put_the_foreground_in_the_box_for_images_and_labels():
    mask = box_mask((6, 5), Box((1, 2), (3, 2)))
    assert mask.sum() == 6 and mask[1:4, 2:4].eq(1).all()
    bg, fg = torch.zeros(2, 1, 6, 5), torch.ones(2, 1, 6, 5)
    mixed = paste(bg, fg, mask)
    assert torch.equal(mixed[:, 0], mask.expand(2, 6, 5))
    labels = paste(torch.full((2, 6, 5), 3), torch.full((2, 6, 5), 1), mask)
    assert labels.dtype == torch.int64 and torch.equal(labels[0], torch.where(mask.bool(), 1, 3))


# ---------------------------------------------------------------------------------- bidirectional mix
def constant(value: float, n: int = 2, size: int = 8) -> torch.Tensor:
    return torch.full((n, 1, size, size), value)


def label_map(value: int, n: int = 2, size: int = 8) -> torch.Tensor:
    return torch.full((n, size, size), value, dtype=torch.long)


def test_mixed_images_and_labels_follow_the_box_in_both_directions():
    mask = box_mask((8, 8), Box((2, 3), (4, 4)))
    inside = mask.bool()
    la, lb = Labeled(constant(1.0), label_map(1)), Labeled(constant(2.0), label_map(2))
    ua, ub = constant(3.0), constant(4.0)
    pa, pb = label_map(3), label_map(0)
    into_u, into_l = bidirectional_mix(la, lb, ua, pa, ub, pb, mask, u_weight=0.5)

    # labeled a pasted into unlabeled a: image 1 in the box, 3 around; label(a) in the box, pseudo(a) around
    assert torch.equal(into_u.image[:, 0], torch.where(inside, 1.0, 3.0).expand(2, 8, 8))
    assert torch.equal(into_u.label(mask), torch.where(inside, 1, 3).expand(2, 8, 8))
    assert (into_u.w_outside, into_u.w_inside) == (0.5, 1.0)  # pseudo-labelled region weighs u_weight
    # unlabeled b pasted into labeled b: image 4 in the box, 2 around; pseudo(b) in the box, label(b) around
    assert torch.equal(into_l.image[:, 0], torch.where(inside, 4.0, 2.0).expand(2, 8, 8))
    assert torch.equal(into_l.label(mask), torch.where(inside, 0, 2).expand(2, 8, 8))
    assert (into_l.w_outside, into_l.w_inside) == (1.0, 0.5)


def test_mix_loss_scores_each_region_against_its_own_target_with_its_weight():
    torch.manual_seed(0)
    mask = box_mask((8, 8), Box((2, 2), (4, 4)))
    inside = mask.bool().expand(2, 8, 8)
    outside_t, inside_t = torch.randint(0, 4, (2, 8, 8)), torch.randint(0, 4, (2, 8, 8))
    logits = torch.randn(2, 4, 8, 8)

    # perfect logits for the mixed label: both terms vanish
    mix = Mix(torch.zeros(2, 1, 8, 8), outside_t, inside_t, 0.5, 1.0)
    perfect = 30.0 * F.one_hot(mix.label(mask), 4).permute(0, 3, 1, 2).float()
    dice, ce = mix_loss(perfect, mix, mask)
    assert dice.item() < 1e-6 and ce.item() < 1e-6

    # each target only matters in its own region: scrambling the outside target inside the box changes nothing
    scrambled = torch.where(inside, (outside_t + 1) % 4, outside_t)
    d1, c1 = mix_loss(logits, mix, mask)
    d2, c2 = mix_loss(logits, mix._replace(outside=scrambled), mask)
    torch.testing.assert_close((d1, c1), (d2, c2))

    # the weighted sum of the region terms, computed by hand
    probs, out_m, in_m = logits.softmax(1), (~inside).float(), inside.float()
    ce_map_out = F.cross_entropy(logits, outside_t, reduction="none")
    ce_map_in = F.cross_entropy(logits, inside_t, reduction="none")
    expected_ce = 0.5 * ce_map_out[~inside].mean() + 1.0 * ce_map_in[inside].mean()
    expected_dice = 0.5 * dice_loss(probs, outside_t, 1e-10, out_m) + dice_loss(probs, inside_t, 1e-10, in_m)
    torch.testing.assert_close(c1, expected_ce)
    torch.testing.assert_close(d1, expected_dice)


def test_masked_dice_equals_dice_on_the_masked_pixels_only():
    torch.manual_seed(0)
    probs = torch.randn(1, 3, 4, 6).softmax(1)
    target = torch.randint(0, 3, (1, 4, 6))
    mask = torch.zeros(4, 6)
    mask[:, :3] = 1  # the left half
    left = dice_loss(probs[..., :3].contiguous(), target[..., :3].contiguous())
    torch.testing.assert_close(dice_loss(probs, target, mask=mask), left)
    torch.testing.assert_close(dice_loss(probs, target, mask=torch.ones(1, 4, 6)), dice_loss(probs, target))


# --------------------------------------------------------------------------------------- pseudo-labels
def test_pseudo_labels_keep_each_classes_largest_component_per_slice():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 0:3, 0:3] = 1          # class 1: a 9-pixel blob ...
    labels[0, 6, 6] = 1              # ... and a stray pixel (removed)
    labels[0, 5:7, 0:2] = 2          # class 2: one blob (kept)
    labels[1, 7, 7] = 1              # slice 1: its only class-1 pixel is its largest component (kept)
    labels[1, 0:2, 0:2] = 3
    labels[1, 4, 4] = 3              # a second, smaller class-3 component (removed)
    logits = 10.0 * F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    cleaned = pseudo_labels(logits)
    expected = labels.clone()
    expected[0, 6, 6] = 0
    expected[1, 4, 4] = 0
    assert torch.equal(cleaned, expected)
    assert torch.equal(pseudo_labels(logits, largest_component=False), labels)

    diag = torch.zeros(1, 4, 4, dtype=torch.long)
    diag[0, 0, 0] = diag[0, 1, 1] = 1  # touching corners: one component with 8-connectivity (skimage default)
    diag[0, 3, 3] = 1
    out = pseudo_labels(10.0 * F.one_hot(diag, 2).permute(0, 3, 1, 2).float())
    assert out[0, 0, 0] == 1 and out[0, 1, 1] == 1 and out[0, 3, 3] == 0


# ------------------------------------------------------------------------------------ stages, teacher
def test_stage_plan_scales_pretraining_with_the_budget():
    st = BCP(BCPConfig(), method_ctx(iterations=30000)).stages()
    assert st == [Stage("pretrain", 10000), Stage("selftrain", 30000, "best_val")]
    assert BCP(BCPConfig(), method_ctx(iterations=20)).stages()[0].iterations == 7
    assert BCP(BCPConfig(pretrain_fraction=0.01), method_ctx(iterations=20)).stages()[0].iterations == 1
    assert METHODS.get("bcp") is BCP


def test_pretraining_uses_labeled_images_only_and_selftraining_needs_unlabeled():
    torch.manual_seed(0)
    bcp = BCP(BCPConfig(), method_ctx())
    seen = []
    bcp.model.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    labeled, u = tiny_batch(n=4, m=4)
    bcp.start_stage(Stage("pretrain", 5), 0)
    out = bcp.train_step(labeled, None, 0)
    assert seen == [2] and math.isfinite(out["loss"].item())  # one pass over k = 2 mixed labeled images
    bcp.start_stage(Stage("selftrain", 5, "best_val"), 1)
    with pytest.raises(ValueError, match="unlabeled"):
        bcp.train_step(labeled, None, 0)
    seen.clear()
    bcp.train_step(labeled, u, 0)
    assert seen == [2, 2]  # two student passes, one per mix


def test_teacher_starts_as_the_pretrained_student_then_follows_by_plain_ema():
    torch.manual_seed(0)
    bcp = BCP(BCPConfig(), method_ctx())
    labeled, u = tiny_batch(n=2, m=2)
    bcp.start_stage(Stage("pretrain", 5), 0)
    for step in range(2):
        bcp.train_step(labeled, u, step)
    assert any(not torch.equal(t, s) for t, s in zip(bcp.teacher.parameters(), bcp.model.parameters()))
    bcp.start_stage(Stage("selftrain", 5, "best_val"), 1)
    for key, value in bcp.model.state_dict().items():  # weights and BN statistics
        assert torch.equal(bcp.teacher.state_dict()[key], value), key
    before = [t.clone() for t in bcp.teacher.parameters()]
    bcp.train_step(labeled, u, 0)  # step 0: no warm-up, alpha = 0.99 already
    for b, t, s in zip(before, bcp.teacher.parameters(), bcp.model.parameters()):
        torch.testing.assert_close(t, 0.99 * b + 0.01 * s)
    assert any(not torch.equal(t, s) for t, s in zip(bcp.teacher.parameters(), bcp.model.parameters()))
    assert all(not p.requires_grad for p in bcp.teacher.parameters())


def test_two_stage_trainer_smoke_and_teacher_hand_over(synthetic, tmp_path):
    starts = {}

    class Recording(BCP):
        def start_stage(self, stage, index):
            super().start_stage(stage, index)
            starts[stage.name] = {k: v.clone() for k, v in self.teacher.state_dict().items()}

    card, data = synthetic
    rec = MetricRecorder()
    cfg = replace(SMOKE, eval_every=1)  # best-on-val after every step: the hand-over need not be the last step
    trainer = Trainer(data, Recording, BCPConfig(pretrain_fraction=2 / 3), cfg, 24, 0, tmp_path, card.evaluation,
                      card.classes, logger=rec, device="cpu", progress=False)
    result = trainer.fit()
    assert sorted(rec.train) == [1, 2, 3, 4, 5]  # 2 pre-training + 3 self-training steps
    assert all(math.isfinite(v) for m in rec.train.values() for k, v in m.items() if k.startswith("train/"))
    assert [m["train/stage"] for _, m in sorted(rec.train.items())] == [0, 0, 1, 1, 1]
    best = safe_load(tmp_path / "pretrain-best_val.pt")["modules"]["model"]
    for key, value in best.items():
        assert torch.equal(starts["selftrain"][key], value), key
    assert "dice" in result.summary["last"]
