"""CML: Cross-View Mutual Learning (Wu et al., ACM MM 2024; `shared/papers/cml.md` §3), 2D ACDC and 3D LA.
Reference code: SongwuJob/CML @1229a71 `code/CML_ACDC_train.py`, `code/utils/CML_utils.py`,
`code/utils/losses.py::mask_DiceLoss`, `code/networks/unet.py`, `code/utils/val_2d.py` (PROTOCOLS.md §3.3);
on LA `code/CML_LA_train.py`, `code/networks/VNet.py`, `code/utils/test_3d_patch.py` (the 3D section below).

Paper, and this module (names as in §3):
- Two sub-networks E_i + D_i with no shared parameters (`variant: paper`, `benchmark/nets/cml.py`): D0
  up-samples bilinearly, D1 with transposed convs. One SGD optimiser over both (as the released code).
- L_dis (Eq. 1): 1 + cos(f_i, sg(f_{1-i})) for each branch, on the bottleneck features; the cosine is taken
  over channels at every position and averaged (released `features_discrepancy_loss`).
- L_sup (Eq. 2): 1/2 (CE + Dice) per branch. `dice: per_sample` (default) is the released code's Dice (sums
  per image, linear denominator, background included), which the paper does not define; `dice: ssl4mis` is
  the SSL4MIS Dice of the other methods here.
- CutMix (Eqs. 5-10): the labeled batch is split into halves (X_u, X_v) = (first, second half), as the
  released code does with its random batch, and one box of side beta x each image side (beta = 1/2 on ACDC)
  is drawn per batch for all pairs; inside the box the image comes from X_v, outside from X_u (M = 0 in
  the box). Labels are mixed with the same box. Unlabeled halves (X_p, X_q) likewise, with a second box.
- Pseudo-labels: argmax of each branch on the UNMIXED unlabeled images (a no-grad forward in train mode, as
  the released code), then per-class largest connected component ("NMS" in the paper; released
  `get_ACDC_2DLargestCC`). Heterogeneous target of branch i (Eq. 9): Y_mix,i = Y_p,(1-i) M + Y_q,i (1 - M),
  i.e. OUTSIDE the box the other branch's label of X_p, INSIDE the box the branch's own label of X_q. The
  released code does the same (`mixu_plab = plab_sub[:k] * mask + plab[k:] * (1 - mask)`, mask = 0 in the
  box); "box from the other net", as issue 8 and PROTOCOLS.md §3.3 word it, would be the reverse.
- L = L_sup^l + lambda_1 L_sup^u + lambda_2 (L_dis^l + L_dis^u) (Eq. 4; lambda_1 = 0.5, lambda_2 = 0.1 on ACDC),
  constant weights (no ramp-up). L_dis uses the features of the mixed inputs.
- Two stages: pre-training (Eq. 11: L_sup^l + lambda_2 L_dis^l on mixed labeled pairs; unlabeled images are
  drawn but unused, as in the released code), then self-training from the best pre-training weights on
  val. The reference runs 10k + 30k; here pre-training is `round(pretrain_fraction * iterations)` steps,
  pretrain_fraction = 1/3, so 30 000 gives 10 000 + 30 000 and `--iterations 20` gives 7 + 20.
  `pretrain_fraction: 0` skips pre-training.
- Inference: argmax of the mean of the two branches' softmax (`predict` returns its log, whose argmax and
  softmax are the paper's). `ensemble: logits` averages logits instead (released `val_2d` / `test_ACDC`).

Released variant (`variant: released`, preset `cml:released` also averages logits): one encoder and one
bilinear decoder each run twice, so the "two views" differ only by encoder dropout (PROTOCOLS.md §3.3).

Departures and choices the paper leaves open:
- Optimiser at the hand-over: the released code reloads the optimiser state saved with the best
  pre-training checkpoint; the Trainer keeps weights only, so self-training starts a FRESH SGD optimiser
  (zero momentum) on the best weights rather than the last pre-training step's momentum (`fresh_optimizer:
  true`, the default; `false` keeps the pre-training optimiser, as the LA suites do).
- Box position: uniformly random (`benchmark.mixing.sample_box`, which, like the released
  `generate_mask_2D`, never places the box flush with the bottom/right border). The paper's "zero-centred
  mask" could also mean a box in the image centre: `box_position: center`.
- `cutmix: false` gives the paper's CFL (§3.1, Eqs. 2-4 on unmixed images, cross argmax pseudo-labels from
  the same forward pass, no largest-component filter as Eq. 3 has none); with `lambda_dis: 0` it is the
  paper's CPS baseline of Fig. 6. The paper does not say whether its CPS / CFL runs pre-train: the presets
  keep the same two stages (pre-training then without CutMix), so the three rows share one schedule.
- Table 4's first row (L_sup^l only) reports exactly the plain U-Net's Table 2 number, so the paper may have
  run a single supervised UNet there; preset `cml:sup-only` is CML with lambda_1 = lambda_2 = 0 (two branches,
  CutMix, two stages), and the plain `supervised` method is the other reading.
- Pseudo-labels come from a forward pass in train mode (dropout on, BatchNorm statistics updated), as the
  released code; the paper does not say.

3D (LA), SongwuJob/CML@1229a71:code/CML_LA_train.py ("the LA script"). The same algorithm and code path; where
it differs from the ACDC one:
- Network: `cml-vnet` (`benchmark/nets/cml.py::CoTrainingVNet`, 19,724,612 parameters at width 16), built
  with the suite's `network_options`: two V-Net encoders and two decoders with no shared parameters, decoder 1
  transposed convs, decoder 2 trilinear up-sampling + 3x3x3 conv (`networks/VNet.py` L232-235). The paper and
  the LA code agree here, so `variant` has no effect in 3D (`cml:released` on LA = the LA release: the same
  network, logits averaged). Branch 0 is the transposed-conv one (the LA script's `outputs1`). L_dis compares
  the encoders' bottlenecks x5 after their dropout (`Decoder.forward(..., with_feature=True)`).
- Weights (paper §4.2 and L39-42): lambda_1 = u_weight = 1.0, lambda_2 = dis_weight = 0.2, l_weight 1.0; loss =
  loss_l + loss_u + 0.2 (dis_l + dis_u) (L253-285) = L_sup^l + lambda_1 L_sup^u + lambda_2 (L_dis^l + L_dis^u),
  Eq. 4, the 2D code path; pre-training L_sup^l + 0.2 L_dis^l (L155-157), Eq. 11. `supervison_loss` =
  (CE + `mask_DiceLoss`) / 2 (CML_utils.py L20-29): `dice: per_sample`, as in 2D.
- Box (`generate_mask_3D`, CML_utils.py L31-41): int(beta * side) per axis, beta = 2/3 (74 x 74 x 53 on 112 x
  112 x 80), start uniform in [0, S - s) (numpy randint): `sample_box`. One box for the labeled pairs, a second
  for the unlabeled pairs (L238, L262), image a outside and b inside (L241, L264), as in 2D.
- Pseudo-labels (`get_cut_mask`, L45-51): each branch's foreground softmax >= 0.5 from a no-grad pass of the
  current model over the unmixed unlabeled batch in train mode (L257-261; ACDC: argmax, which differs only on
  exact ties), then the largest 3D connected component (skimage's full 26-connectivity, `LargestCC_pancreas`
  L53-64). Selected by the patch's dimensions (3D with 2 classes). Targets (L267-268): Eq. 9 as in 2D.
- Stages: pre-training 2000 iterations at a constant lr (no lr code in `pre_train`), self-training 15000 with x0.1
  every 2500 (L300-304): in 3D the pre-training stage carries `lr_schedule="constant"` and self-training follows
  the Trainer's (the suites' `step`). `pretrain_fraction` 2/15 of the 15000 budget.
- Hand-over: the LA script reloads the best pre-training checkpoint's weights AND optimiser state
  (`load_net_opt`, L216-217). The Trainer hands over weights only; `fresh_optimizer: false` (LA) keeps the
  pre-training optimiser (its momentum from the LAST pre-training step, not from the best one; the two
  coincide when the best is the last), `fresh_optimizer: true` (default, the 2D choice above) starts a new one.
  A Config option rather than a rule by dimension: both scripts reload the optimiser, so the choice is the
  same approximation either way and the suite states it.
- Inference: `utils/test_3d_patch.py` L126-128 averages the two branches' LOGITS before the softmax
  (`ensemble: logits`, which the LA suites set); the paper (§3.3) averages the probability maps, the default.
- Not method settings (suite tables): batch 8 (4 + 4), SGD 0.01 momentum 0.9 wd 1e-4; best on the TEST list
  every 200 iterations in both stages (L170-183, L306-321); `test_LA.py` nms 1 (largest component).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.config import ConfigError
from benchmark.losses import dice_ce_loss, dice_loss_per_sample
from benchmark.masks import largest_component_per_sample
from benchmark.mixing import Box, box_mask, box_size, paste, sample_box
from methods.base import METHODS, Labeled, Method, MethodContext, Stage

FIG5_BETA = [1 / 3, 1 / 2, 2 / 3, 5 / 6]
FIG5_LAMBDA = [0.1, 0.2, 0.5, 1.0]


@dataclass
class CMLConfig:
    variant: str = "paper"            # paper: two sub-networks | released: one encoder + decoder run twice
    beta: float = 0.5                 # CutMix box side / image side (ACDC 1/2; LA, BraTS 2/3)
    lambda_u: float = 0.5             # lambda_1: heterogeneous consistency L_sup^u (ACDC 0.5)
    lambda_dis: float = 0.1           # lambda_2: feature discrepancy L_dis (ACDC 0.1)
    pretrain_fraction: float = 1 / 3  # pre-training steps = round(fraction * iterations); 0: no pre-training
    cutmix: bool = True               # False: CFL (§3.1), no mixing, cross pseudo-labels
    largest_component: bool = True    # per-class largest connected component of the pseudo-labels
    box_position: str = "random"      # random (released code) | center
    dice: str = "per_sample"          # per_sample (released mask_DiceLoss) | ssl4mis
    ensemble: str = "probs"           # probs: mean softmax (paper) | logits: mean logits (released code)
    fresh_optimizer: bool = True      # a new SGD optimiser for self-training; False: keep it (LA load_net_opt)

    def __post_init__(self) -> None:
        choices = {"variant": ("paper", "released"), "box_position": ("random", "center"),
                   "dice": ("per_sample", "ssl4mis"), "ensemble": ("probs", "logits")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"cml: {name} must be one of {', '.join(valid)} (got {getattr(self, name)!r})")
        if not 0 < self.beta < 1:
            raise ConfigError(f"cml: beta is the box side fraction and must lie in (0, 1) (got {self.beta})")
        if self.pretrain_fraction < 0:
            raise ConfigError(f"cml: pretrain_fraction must be >= 0 (got {self.pretrain_fraction})")


def feature_discrepancy(features: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Eq. 1: 1 + cosine similarity of `features` and the detached `other`, over channels (dim 1) at every
    position, averaged: 2 for identical, 1 for orthogonal, 0 for opposite features."""
    return 1 + F.cosine_similarity(features.float(), other.detach().float(), dim=1, eps=1e-6).mean()


def heterogeneous_targets(pseudo0: torch.Tensor, pseudo1: torch.Tensor, inside: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9 for the pairs (X_p, X_q) = (first half, second half) of the unlabeled batch. `pseudo_i`
    (2k, *spatial) is branch i's pseudo-label of the whole unmixed batch, `inside` the (*spatial) box mask.
    Branch i's target: the other branch's label of X_p outside the box, its own label of X_q inside the box."""
    k, dims = pseudo0.shape[0] // 2, inside.dim()
    return (paste(pseudo1[:k], pseudo0[k:2 * k], inside, dims),
            paste(pseudo0[:k], pseudo1[k:2 * k], inside, dims))


def centred_box(shape: tuple[int, ...], side_ratio: float) -> Box:
    """The box of `sample_box`'s size in the middle of the (*spatial) image."""
    size = box_size(shape, side_ratio)
    return Box(tuple((s - n) // 2 for s, n in zip(shape, size)), size)


@METHODS.register("cml", "two sub-networks, feature conflict + CutMix heterogeneous pseudo-labels, pre-train then "
                         "self-train (CML, ACM MM 2024)")
class CML(Method):
    Config = CMLConfig
    pairs_per_half = True   # copy-paste / CutMix pair two images within each half-batch
    dims = (2, 3)
    networks = ("unet", "vnet")  # builds its own variant: cml-unet-2d (2D), cml-vnet (3D)
    presets = {
        "released": {"variant": "released", "ensemble": "logits"},  # the released 2D code as it runs
        # Table 4 (loss ablation); its last row (all three losses) is plain `cml`
        "sup-only": {"lambda_u": 0.0, "lambda_dis": 0.0},     # L_sup^l
        "no-unsup": {"lambda_u": 0.0},                        # L_sup^l + L_dis
        "no-dis": {"lambda_dis": 0.0},                        # L_sup^l + L_sup^u
        # Fig. 6: CPS -> CFL -> CML (plain `cml`), all in the two-sub-network co-training framework
        "cps": {"cutmix": False, "largest_component": False, "lambda_dis": 0.0},
        "cfl": {"cutmix": False, "largest_component": False},
    }
    search_grids = {"beta": FIG5_BETA, "lambda_u": FIG5_LAMBDA, "lambda_dis": FIG5_LAMBDA}  # Fig. 5
    search_space = {name: "choice:" + ",".join(repr(v) for v in grid) for name, grid in search_grids.items()}

    def __init__(self, cfg: CMLConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        if ctx.spatial_dims == 3:   # the LA release has the paper's two V-Nets: no shared variant
            self.net = ctx.build_network("cml-vnet", **ctx.network_options)
        else:
            self.net = ctx.build_network("cml-unet-2d", shared=cfg.variant == "released")
        self.optimizer = ctx.make_optimizer(self.net.parameters())
        self.stage = self.stages()[0].name

    # ---- stages ---------------------------------------------------------------------------------
    @property
    def pretrain_iterations(self) -> int:
        return int(round(self.cfg.pretrain_fraction * self.ctx.iterations))

    def stages(self) -> list[Stage]:
        selftrain = Stage("selftrain", self.ctx.iterations, init="best_val")
        if self.pretrain_iterations == 0:
            return [Stage("selftrain", self.ctx.iterations)]
        schedule = "constant" if self.ctx.spatial_dims == 3 else None   # LA: no lr update while pre-training
        return [Stage("pretrain", self.pretrain_iterations, lr_schedule=schedule), selftrain]

    def start_stage(self, stage: Stage, index: int) -> None:
        self.stage = stage.name
        if index > 0 and self.cfg.fresh_optimizer:  # a new optimiser on the best pre-training weights (docstring)
            self.optimizer = self.ctx.make_optimizer(self.net.parameters())

    # ---- pieces -----------------------------------------------------------------------------------
    def sup_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Eq. 2: 1/2 (CE + Dice)."""
        if self.cfg.dice == "ssl4mis":
            return dice_ce_loss(logits, target)
        logits = logits.float()
        return 0.5 * (F.cross_entropy(logits, target.long()) + dice_loss_per_sample(logits.softmax(1), target))

    def box(self, x: torch.Tensor) -> torch.Tensor:
        """One (*spatial) mask for the batch: 1 inside the box of side beta x each image side (where M = 0)."""
        shape = x.shape[2:]
        box = centred_box(shape, self.cfg.beta) if self.cfg.box_position == "center" else sample_box(shape, self.cfg.beta)
        return box_mask(shape, box, x.device)

    @staticmethod
    def halves(x: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        k = x.shape[0] // 2
        if k == 0:
            raise ValueError(f"CML's CutMix pairs {what} images: the batch needs at least 2 of them")
        return x[:k], x[k:2 * k]

    def pseudo_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """argmax (2D, ACDC) or, in 3D with 2 classes, foreground softmax >= 0.5 (LA `get_cut_mask`); then the
        per-class largest connected component when `largest_component`."""
        logits = logits.detach()
        if self.ctx.spatial_dims == 3 and logits.shape[1] == 2:
            labels = (logits.float().softmax(1)[:, 1] >= 0.5).long()
        else:
            labels = logits.argmax(1)
        return largest_component_per_sample(labels, self.ctx.num_classes) if self.cfg.largest_component else labels

    def branch_losses(self, outputs: tuple[torch.Tensor, ...], targets: tuple[torch.Tensor, torch.Tensor] | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of both branches' L_sup on `targets` (0 without targets), L_dis,0 + L_dis,1) from `self.net`'s
        outputs."""
        logits0, logits1, f0, f1 = outputs
        sup = (self.sup_loss(logits0, targets[0]) + self.sup_loss(logits1, targets[1]) if targets is not None
               else logits0.new_zeros((), dtype=torch.float32))
        return sup, feature_discrepancy(f0, f1) + feature_discrepancy(f1, f0)

    def labeled_losses(self, labeled: Labeled) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = labeled
        if self.cfg.cutmix:  # Eqs. 5-7
            (xa, xb), (ya, yb), inside = self.halves(x, "labeled"), self.halves(y, "labeled"), self.box(x)
            x, y = paste(xa, xb, inside, inside.dim()), paste(ya, yb, inside, inside.dim())
        return self.branch_losses(self.net(x), (y, y))

    def unlabeled_losses(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cfg.cutmix:  # CFL, Eq. 3: each branch learns the other's pseudo-label of the same pass
            outputs = self.net(u)
            return self.branch_losses(outputs, (self.pseudo_labels(outputs[1]), self.pseudo_labels(outputs[0])))
        (up, uq), inside = self.halves(u, "unlabeled"), self.box(u)
        targets = None
        if self.cfg.lambda_u != 0:  # (Table 4's L_sup^l + L_dis row needs no pseudo-labels)
            with torch.no_grad():
                logits0, logits1, _, _ = self.net(u)
            targets = heterogeneous_targets(self.pseudo_labels(logits0), self.pseudo_labels(logits1), inside)
        return self.branch_losses(self.net(paste(up, uq, inside, inside.dim())), targets)

    # ---- the step -----------------------------------------------------------------------------------
    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        sup_l, dis_l = self.labeled_losses(labeled)
        if self.stage == "pretrain":  # Eq. 11
            loss = sup_l + cfg.lambda_dis * dis_l
            self.update(loss, self.optimizer)
            return {"loss": loss.detach(), "loss_sup_l": sup_l.detach(), "loss_dis": dis_l.detach()}
        if unlabeled is None:
            raise ValueError("CML self-training needs unlabeled images in every batch "
                             "(batch_size > labeled_batch_size)")
        if cfg.lambda_u == 0 and cfg.lambda_dis == 0:  # Table 4's first row: unlabeled data take no part
            sup_u = dis_u = sup_l.new_zeros(())
        else:
            sup_u, dis_u = self.unlabeled_losses(unlabeled)
        dis = dis_l + dis_u
        loss = sup_l + cfg.lambda_u * sup_u + cfg.lambda_dis * dis   # Eq. 4
        self.update(loss, self.optimizer)
        return {"loss": loss.detach(), "loss_sup_l": sup_l.detach(), "loss_sup_u": sup_u.detach(),
                "loss_dis": dis.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        logits0, logits1, _, _ = self.net(x)
        if self.cfg.ensemble == "logits":
            return (logits0 + logits1) / 2
        probs = (logits0.float().softmax(1) + logits1.float().softmax(1)) / 2
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
