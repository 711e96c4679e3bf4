"""AdvMIM: block masks, mask tokens (CNN side; the Swin side is in test_swin_unet), discriminator, LSGAN,
certainty weighting per variant, ablation presets, prediction net, a Trainer smoke run."""
import math

import pytest
import torch

from benchmark import catalog
from benchmark.config import ConfigError
from benchmark.losses import dice_loss, lsgan_discriminator_loss, lsgan_generator_loss, weighted_ce
from benchmark.masks import masked_block_count, random_block_masks
from benchmark.nets.discriminator import PatchDiscriminator
from benchmark.nets.unet import UNet2D
from methods.advmim import AdvMIM, AdvMIMConfig, FeatureMaskToken, supervised_loss, unlabeled_loss
from methods.base import METHODS, MethodContext
from method_helpers import smoke_run, tiny_batch


def ctx(size: int = 64) -> MethodContext:
    return MethodContext(1, 4, 100, "unet", lambda p: torch.optim.SGD(p, lr=0.01), size)


# ------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_block_masks_mask_exactly_ceil_ratio_of_49_blocks(ratio):
    torch.manual_seed(0)
    masks = random_block_masks(16, (7, 7), ratio)
    assert masks.shape == (16, 7, 7) and masks.dtype == torch.bool
    assert masks.flatten(1).sum(1).tolist() == [math.ceil(ratio * 49)] * 16   # 0.7 -> 35
    assert len({m.flatten().tolist().__str__() for m in masks}) > 1             # per-sample masks
    assert not torch.equal(masks, random_block_masks(16, (7, 7), ratio))        # new masks on every call


def test_masked_block_count_ignores_float_noise():
    assert masked_block_count(49, 0.7) == 35 and masked_block_count(10, 0.7) == 7  # 0.7 * 10 = 7.000000000000001
    with pytest.raises(ValueError):
        masked_block_count(49, 1.5)


def test_cnn_mask_token_after_first_block_keeps_unet_size_and_gets_gradients():
    torch.manual_seed(0)
    unet = UNet2D(1, 4)
    assert sum(p.numel() for p in unet.parameters()) == 1_813_764
    token = FeatureMaskToken(16)
    mask = torch.tensor([[[True, False], [False, False]]])
    seen = {}

    def hook(features):
        seen["in"] = features
        seen["out"] = token(features, mask)
        return seen["out"]

    x = torch.rand(1, 1, 64, 64)
    unet(x, after_first=hook).sum().backward()
    assert seen["in"].shape == (1, 16, 64, 64)
    out = seen["out"].detach()
    torch.testing.assert_close(out[0, :, :32, :32], token.token[0].detach().expand(16, 32, 32))
    torch.testing.assert_close(out[0, :, 32:, :], seen["in"].detach()[0, :, 32:, :])
    assert token.token.grad is not None and token.token.grad.abs().sum() > 0
    unet.eval()
    with torch.no_grad():  # without the hook the UNet is the plain one
        torch.testing.assert_close(unet(x), unet.decoder(unet.encoder(x)))


# ----------------------------------------------------------------------------------- discriminator
def test_patch_discriminator_is_five_convs_with_a_7x7_map_at_224():
    d = PatchDiscriminator(4)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in d.modules())
    with torch.no_grad():
        assert d(torch.rand(2, 4, 224, 224).softmax(1)).shape == (2, 1, 7, 7)


def test_lsgan_losses_follow_their_formulas():
    real = torch.tensor([1.0, 0.5, -1.0])
    fake = torch.tensor([0.0, 2.0])
    # D: mean((real - 1)^2) + mean(fake^2) = (0 + 0.25 + 4) / 3 + (0 + 4) / 2
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(4.25 / 3 + 2.0)
    # G: mean((fake - 1)^2) = (1 + 1) / 2
    assert lsgan_generator_loss(fake).item() == pytest.approx(1.0)
    assert lsgan_discriminator_loss(torch.ones(3), torch.zeros(2)).item() == 0.0


# ------------------------------------------------------------------------------ certainty weights
def test_certainty_weights_multiply_only_what_each_variant_says():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    w = torch.rand(2, 8, 8)
    dice = dice_loss(logits.softmax(1), target)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    for masked in (False, True):   # paper, Eqs. 2 and 4: w on the CE only, the Dice unweighted
        torch.testing.assert_close(unlabeled_loss(logits, target, w, masked), (w * ce).mean() + dice)
        torch.testing.assert_close(unlabeled_loss(logits, target, torch.zeros_like(w), masked), dice)
    # released: original input 0.1 Dice, no weight at all; masked input: CE weighted and normalised by sum(w)
    for scale in (1.0, 0.5, 3.0):
        torch.testing.assert_close(unlabeled_loss(logits, target, scale * w, False, released=True), 0.1 * dice)
        torch.testing.assert_close(unlabeled_loss(logits, target, scale * w, True, released=True),
                                   (w * ce).sum() / w.sum())
    torch.testing.assert_close(weighted_ce(logits, target), ce.mean())
    torch.testing.assert_close(supervised_loss(logits, target), ce.mean() + dice)
    torch.testing.assert_close(supervised_loss(logits, target, dice=False), ce.mean())  # released: S's masked labeled term


# --------------------------------------------------------------------------------------- presets
TERMS = {
    "labeled-only": {"seg_l_s"},
    "cross-teaching": {"seg_l_s", "seg_l_c", "seg_u_s", "seg_u_c"},
    "masked-domain": {"seg_l_s", "seg_l_c", "seg_u_s", "seg_u_c", "mdl_l_s", "mdl_u_s"},
    "adversarial": {"seg_l_s", "seg_l_c", "seg_u_s", "seg_u_c", "mdl_l_s", "mdl_u_s", "adv_s", "d_s"},
    "full": {"seg_l_s", "seg_l_c", "seg_u_s", "seg_u_c", "mdl_l_s", "mdl_u_s", "adv_s", "d_s",
             "mdl_l_c", "mdl_u_c", "adv_c", "d_c"},
}


@pytest.mark.parametrize("preset", list(TERMS))
def test_each_table1_preset_has_exactly_its_terms(preset):
    torch.manual_seed(0)
    cfg = AdvMIMConfig(**catalog.preset_overrides(f"advmim:{preset}"), mask_block=16)  # 2x2 blocks at 32 px
    method = AdvMIM(cfg, ctx(32))
    labeled, u = tiny_batch()
    out = method.train_step(labeled, u, step=0)
    nets = {"s"} | ({"c"} if cfg.cross_teaching else set())
    assert set(out) == {"loss"} | {f"loss_{k}" for k in nets} | {f"loss_{t}" for t in TERMS[preset]}
    assert all(torch.isfinite(v) for v in out.values())
    for k in nets:   # each net's total: its terms, the adversarial one times lambda_adv
        expected = sum((1e-3 if t.startswith("adv") else 1.0) * out[f"loss_{t}"]
                       for t in TERMS[preset] if t.endswith(f"_{k}") and not t.startswith("d_"))
        assert out[f"loss_{k}"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert ("cnn" in method.modules()) == cfg.cross_teaching


def test_registration_search_space_and_grids():
    assert METHODS.get("advmim") is AdvMIM
    assert AdvMIM.search_space == {"mask_ratio": "uniform:0.1:0.9", "lambda_adv": "loguniform:1e-4:1"}
    assert AdvMIM.search_grids["mask_ratio"] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert AdvMIM.search_grids["lambda_adv"] == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    with pytest.raises(ConfigError, match="need cross_teaching"):
        AdvMIMConfig(cross_teaching=False)
    with pytest.raises(ConfigError, match="loss_variant"):
        AdvMIMConfig(loss_variant="flare")


# ------------------------------------------------------------------------------------ the updates
def test_step_updates_nets_tokens_and_discriminators_and_clips_all_four(monkeypatch):
    torch.manual_seed(0)
    method = AdvMIM(AdvMIMConfig(mask_block=16), ctx(32))
    watched = {name: [p.clone() for p in method.modules()[name].parameters()]
               for name in ("transformer", "cnn", "cnn_mask_token", "discriminator_s", "discriminator_c")}
    labeled, u = tiny_batch()
    method.train_step(labeled, u, step=0)
    for name, before in watched.items():
        assert any(not torch.equal(a, b) for a, b in zip(before, method.modules()[name].parameters())), name
    assert method.transformer.mask_token.grad is not None
    assert all(p.requires_grad for p in method.discriminator_s.parameters())

    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm: clipped.append(max_norm) or real_clip(params, max_norm))
    released = AdvMIM(AdvMIMConfig(loss_variant="released", mask_block=16), ctx(32))
    out = released.train_step(labeled, u, step=0)
    assert clipped == [5.0] * 4   # S, C (with its token), D_s, D_c
    method.train_step(labeled, u, step=0)
    assert clipped == [5.0] * 8   # the paper variant clips too (the paper is silent; it diverges without)
    unclipped = AdvMIM(AdvMIMConfig(mask_block=16, grad_clip=0.0), ctx(32))
    unclipped.train_step(labeled, u, step=0)
    assert len(clipped) == 8
    assert out["loss_d_s"].item() < 0.5   # the released D loss is scaled by 0.1 (about 0.1 * 1 at start)


def test_prediction_uses_the_transformer_only():
    torch.manual_seed(0)
    method = AdvMIM(AdvMIMConfig(), ctx(32))
    method.train(False)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        before = method.predict(x)
        torch.testing.assert_close(before, method.transformer(x))
        for p in method.cnn.parameters():
            p.add_(1.0)
        torch.testing.assert_close(method.predict(x), before)


def test_advmim_trainer_smoke(synthetic, tmp_path):
    # 32-px smoke patches: 16-px mask blocks give a 2x2 grid (3 of 4 masked) instead of one all-masked block
    rec = smoke_run(synthetic, tmp_path, AdvMIM, AdvMIMConfig(mask_block=16))
    for m in rec.train.values():
        assert {f"train/loss_{t}" for t in TERMS["full"]} <= set(m)


def test_suites_train_advmim_as_the_paper_and_the_ablation_suite_runs_table1():
    for name in ("acdc-3pct", "acdc-10pct"):
        suite = catalog.get_suite(name)
        assert "all" in suite.methods
        assert suite.method_train["advmim"] == {"batch_size": 16, "labeled_batch_size": 8, "patch_size": 224,
                                                "lr": 0.05, "lr_schedule": "poly"}
    ablation = catalog.get_suite("advmim-ablation")
    assert list(ablation.methods) == [f"advmim:{p}" for p in TERMS]
    assert list(ablation.labeled) == ["10%"] and ablation.train["lr"] == 0.05 and ablation.train["patch_size"] == 224


def test_suites_start_the_swin_unet_from_imagenet_as_the_released_code():
    """Released train.py L118-128 calls load_from (config.py L50: the ImageNet Swin-T checkpoint): every
    ACDC suite with AdvMIM, the Table 1 ablation included, asks for `pretrained: imagenet`."""

    for name in ("acdc-3pct", "acdc-10pct", "advmim-ablation"):
        suite = catalog.get_suite(name)
        assert suite.pretrained == "imagenet" and "pretrained" not in suite.method_config.get("advmim", {})
    assert AdvMIMConfig().pretrained == "none" and AdvMIMConfig(pretrained=None).pretrained == "none"
    assert AdvMIMConfig(pretrained="ImageNet").pretrained == "imagenet"
