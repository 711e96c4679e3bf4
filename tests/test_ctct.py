"""CTCT: the cross-teaching Dice on known inputs, one step on tiny tensors, the prediction net, a smoke run."""
import pytest
import torch

from benchmark.config import ConfigError
from benchmark.losses import dice_loss, pseudo_targets
from benchmark.nets.swin_unet import SwinUNet
from benchmark.nets.unet import UNet2D
from methods.base import METHODS, MethodContext
from methods.ctct import CTCT, CTCTConfig, cross_teaching_dice
from method_helpers import smoke_run, tiny_batch


def ctx(size: int = 32) -> MethodContext:
    return MethodContext(1, 4, 100, "unet", lambda p: torch.optim.SGD(p, lr=0.1), size)


def test_pseudo_targets_are_argmax_and_max_probability_without_gradient():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2).requires_grad_(True)  # pixels: (2,0), (0,1)
    labels, certainty = pseudo_targets(logits)
    assert labels.tolist() == [[[0, 1]]]
    torch.testing.assert_close(certainty, torch.tensor([[[torch.tensor(2.0).sigmoid(), torch.tensor(1.0).sigmoid()]]]))
    assert not labels.requires_grad and not certainty.requires_grad


def test_cross_teaching_dice_uses_the_other_nets_argmax():
    torch.manual_seed(0)
    cnn = torch.randn(2, 4, 8, 8, requires_grad=True)
    swin = torch.randn(2, 4, 8, 8, requires_grad=True)
    to_cnn, to_swin = cross_teaching_dice(cnn, swin)
    torch.testing.assert_close(to_cnn, dice_loss(cnn.detach().softmax(1), swin.detach().argmax(1)))
    torch.testing.assert_close(to_swin, dice_loss(swin.detach().softmax(1), cnn.detach().argmax(1)))
    to_cnn.backward()
    assert swin.grad is None and cnn.grad.abs().sum() > 0
    # Teaching oneself with one's own argmax scores lower than being taught by a disagreeing net.
    self_taught, _ = cross_teaching_dice(cnn.detach(), cnn.detach())
    assert self_taught < to_cnn


def test_step_trains_a_unet_and_a_swin_unet_with_the_ramped_weight():
    torch.manual_seed(0)
    method = CTCT(CTCTConfig(), ctx())
    assert METHODS.get("ctct") is CTCT
    assert isinstance(method.cnn, UNet2D) and isinstance(method.transformer, SwinUNet)
    assert method.transformer.img_size == 32 and method.transformer.pretrained is None
    before = [[p.clone() for p in m.parameters()] for m in (method.cnn, method.transformer)]
    labeled, u = tiny_batch()
    out = method.train_step(labeled, u, step=30000)
    assert out["cons_weight"].item() == pytest.approx(0.1)
    assert out["loss_cnn"].item() == pytest.approx(out["loss_sup_cnn"].item() + 0.1 * out["loss_cross_cnn"].item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["loss_cnn"].item() + out["loss_transformer"].item(), rel=1e-5)
    for b, m in zip(before, (method.cnn, method.transformer)):
        assert any(not torch.equal(x, y) for x, y in zip(b, m.parameters()))
    assert method.train_step(labeled, u, step=0)["cons_weight"].item() == pytest.approx(0.1 * torch.exp(torch.tensor(-5.0)).item())


def test_prediction_net_is_configurable():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32)
    for which, attr in (("cnn", "cnn"), ("transformer", "transformer")):
        method = CTCT(CTCTConfig(predict_with=which), ctx())
        method.train(False)
        with torch.no_grad():
            torch.testing.assert_close(method.predict(x), getattr(method, attr)(x))
    with pytest.raises(ConfigError, match="predict_with"):
        CTCTConfig(predict_with="both")


def test_ctct_trainer_smoke(synthetic, tmp_path):
    rec = smoke_run(synthetic, tmp_path, CTCT)
    assert all("train/loss_cross_transformer" in m for m in rec.train.values())


def _ssl4mis_dice(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """SSL4MIS `DiceLoss` as PROTOCOLS.md §3.1 describes it, written out here: per class c over the whole batch,
    1 - (2 sum p_c t_c + eps) / (sum p_c^2 + sum t_c^2 + eps), averaged over all classes (background too)."""
    terms = []
    for c in range(probs.shape[1]):
        p, t = probs[:, c], (target == c).float()
        terms.append(1 - (2 * (p * t).sum() + eps) / ((p * p).sum() + (t * t).sum() + eps))
    return torch.stack(terms).mean()


def test_step_losses_equal_the_reference_terms_on_identical_inputs():
    """SSL4MIS train_cross_teaching_between_cnn_transformer_2D.py L227-248 on the same logits: per net
    0.5 (CE + Dice) on the labeled part + w Dice(own softmax, OTHER net's argmax) on the unlabeled part,
    w = 0.1 exp(-5 (1 - min(step // 150, 200) / 200)^2); loss = the sum of both nets' losses."""
    torch.manual_seed(0)
    method = CTCT(CTCTConfig(), ctx())
    method.train(False)   # dropout and drop-path off: the step sees the logits computed here
    labeled, u = tiny_batch()
    x, n = torch.cat([labeled.image, u]), labeled.image.shape[0]
    with torch.no_grad():
        cnn, swin = method.cnn(x), method.transformer(x)
    step = 4567
    weight = 0.1 * torch.exp(torch.tensor(-5.0 * (1 - min(step // 150, 200) / 200) ** 2)).item()
    expect = {}
    for name, own, other in (("cnn", cnn, swin), ("transformer", swin, cnn)):
        probs = own.softmax(1)
        expect[f"loss_sup_{name}"] = 0.5 * (torch.nn.functional.cross_entropy(own[:n], labeled.label)
                                            + _ssl4mis_dice(probs[:n], labeled.label))
        expect[f"loss_cross_{name}"] = _ssl4mis_dice(probs[n:], other[n:].argmax(1))
        expect[f"loss_{name}"] = expect[f"loss_sup_{name}"] + weight * expect[f"loss_cross_{name}"]
    expect["loss"] = expect["loss_cnn"] + expect["loss_transformer"]
    out = method.train_step(labeled, u, step)
    assert out["cons_weight"].item() == pytest.approx(weight)
    for key, value in expect.items():
        assert out[key].item() == pytest.approx(value.item(), rel=1e-5), key


def test_acdc_suites_train_ctct_as_the_reference_script_from_imagenet_weights():
    """8 + 8 at 224, SGD lr 0.01 momentum 0.9 wd 1e-4 poly 0.9 for both nets (L55-61, L94, L201-204, L260),
    ramp 0.1 over 200 x 150 steps (L102-105), ImageNet Swin-T (L173)."""
    from benchmark import catalog
    from benchmark.config import TrainConfig, build_dataclass

    for name in ("acdc-3pct", "acdc-10pct"):
        suite = catalog.get_suite(name)
        cfg = build_dataclass(TrainConfig, {**suite.train, **suite.method_train["ctct"]}, name)
        assert (cfg.batch_size, cfg.labeled_batch_size, cfg.patch_size, cfg.optimizer, cfg.lr, cfg.momentum,
                cfg.weight_decay, cfg.lr_schedule, cfg.poly_power, cfg.iterations) == \
            (16, 8, (224, 224), "sgd", 0.01, 0.9, 1e-4, "poly", 0.9, 30000)
        assert suite.pretrained == "imagenet" and "ctct" not in suite.method_config
    default = CTCTConfig()
    assert (default.consistency, default.consistency_rampup, default.rampup_unit) == (0.1, 200.0, 150)
    assert default.pretrained == "none" and CTCTConfig(pretrained=None).pretrained == "none"
