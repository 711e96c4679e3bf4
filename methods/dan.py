"""Deep Adversarial Networks (Zhang et al., MICCAI 2017) as in SSL4MIS `train_adversarial_network_2D.py`
(PROTOCOLS.md §3.1, checked against HiLab-git/SSL4MIS @06df604 with `code/networks/discriminator.py`).

What the reference does, and this module does too:
- Label convention: the discriminator's class 1 = "labeled" (target [1]*labeled_bs + [0]*unlabeled_bs).
- Segmenter step (segmenter in train mode, discriminator in EVAL mode, i.e. no dropout): one forward pass on
  labeled + unlabeled; supervised 0.5 * (CE + Dice) on the labeled part (CE on the logits); adversarial term
  = CE(D(softmax of the unlabeled predictions, unlabeled images), 1), i.e. it pushes D to call unlabeled
  predictions "labeled". Gradients reach the segmenter through the softmax (not detached).
  Weight: 0.1 * sigmoid_rampup(step // 150, 200), computed before the counter increments, so step t uses
  t // 150 (= `consistency_weight(step)`); no start delay.
- Discriminator step, after the segmenter has stepped: segmenter in EVAL mode, discriminator in train mode;
  the whole batch is re-predicted under no_grad (so D sees detached predictions of the updated segmenter),
  and D is trained with CE against [1]*labeled + [0]*unlabeled. D's Adam: lr 1e-4, betas (0.9, 0.99),
  default weight decay 0.
- The reference decays only the segmenter's lr (poly); D's lr stays 1e-4. The Trainer applies its schedule
  to every optimiser, so `train_step` puts D's lr back to `d_lr` before D's step.
- Inference: the segmenter (the only net the reference saves).

Departure: the reference's adversarial CE target is `DAN_target[:labeled_bs]`, which needs
labeled_bs == unlabeled_bs (12 + 12 there); here the target has one "labeled" entry per unlabeled image.
The discriminator's Linear width depends on the training patch size (see `benchmark/nets/discriminator.py`),
so it is built for the Trainer's patch (256 as in the reference) unless `disc_input_size` is set;
a mismatch raises.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.losses import dice_ce_loss
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext

LABELED, UNLABELED = 1, 0  # the discriminator's classes


@dataclass
class DANConfig(RampedConsistency):
    d_lr: float = 1e-4
    d_beta1: float = 0.9
    d_beta2: float = 0.99
    disc_input_size: int = 0            # 0: the training patch size (the discriminator's Linear depends on it)


def adversarial_loss(d_logits: torch.Tensor) -> torch.Tensor:
    """The segmenter's term: CE of D's logits on unlabeled predictions against the LABELED class."""
    target = torch.full((d_logits.shape[0],), LABELED, dtype=torch.long, device=d_logits.device)
    return F.cross_entropy(d_logits.float(), target)


def discriminator_targets(n_labeled: int, n_unlabeled: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([LABELED] * n_labeled + [UNLABELED] * n_unlabeled, dtype=torch.long, device=device)


@METHODS.register("dan", "adversarial: FC discriminator on (softmax, image), segmenter fools it on unlabeled (SSL4MIS)")
class DAN(Method):
    Config = DANConfig

    def __init__(self, cfg: DANConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network()
        self.discriminator = ctx.build_network("fc-discriminator", input_size=cfg.disc_input_size or ctx.patch[0])
        self.optimizer = ctx.make_optimizer(self.model.parameters())
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.d_lr,
                                            betas=(cfg.d_beta1, cfg.d_beta2))

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError("DAN needs unlabeled images in every batch (batch_size > labeled_batch_size)")
        cfg, n = self.cfg, labeled.image.shape[0]
        x = torch.cat([labeled.image, unlabeled])

        # 1) segmenter: supervised + weight * CE(D(unlabeled prediction), "labeled"); D frozen in eval mode
        self.model.train()
        self.discriminator.eval()
        logits = self.model(x)
        sup = dice_ce_loss(logits[:n], labeled.label)
        adv = adversarial_loss(self.discriminator(logits[n:].float().softmax(1), unlabeled))
        weight = cfg.consistency_weight(step)
        loss = sup + weight * adv
        self.update(loss, self.optimizer)  # D's grads from this pass are cleared by D's zero_grad below

        # 2) discriminator on detached predictions of the updated segmenter (eval mode), labeled = 1
        for group in self.d_optimizer.param_groups:
            group["lr"] = cfg.d_lr  # constant, as the reference (undo the Trainer's schedule)
        self.model.eval()
        self.discriminator.train()
        with torch.no_grad():
            probs = self.model(x).float().softmax(1)
        d_logits = self.discriminator(probs, x)
        d_loss = F.cross_entropy(d_logits.float(), discriminator_targets(n, x.shape[0] - n, x.device))
        self.update(d_loss, self.d_optimizer)
        self.model.train()
        return {"loss": loss.detach(), "loss_sup": sup.detach(), "loss_adv": adv.detach(),
                "loss_d": d_loss.detach(), "cons_weight": torch.tensor(weight)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
