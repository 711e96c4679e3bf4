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
