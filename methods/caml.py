"""CAML (Gao et al., MICCAI 2023, "Correlation-aware mutual learning for semi-supervised medical image
segmentation"), LA version: Herschel555/CAML@b635479 `code/train_caml.py`, `code/networks/VNet.py` (`caml3d_v1`),
`code/utils/feature_memory.py`, `code/utils/correlation.py`, `code/utils/losses.py`, `code/test_3d.py`.

What the reference does, and this module does too:
- Network `caml-3d` (`benchmark/nets/caml3d.py`): branch v = V-Net encoder + transposed-conv decoder; branch a =
  V-Net encoder with cross-sample mutual attention (intra- then inter-sample transformer layers on x4, training
  only) + trilinear decoder; per branch a projection and a prediction MLP on the decoder's last feature map x9
  (after its dropout). Dropout on (train factory). One SGD optimiser (the Trainer's) over everything (L131).
- Supervised loss (L156-160): the sum over both branches of `Binary_dice_loss` on the foreground softmax of the
  labeled half, 1 - (2 sum(p t) + 1e-8) / (sum p + sum t + 1e-8), weight `lamda` 0.5. No CE.
- Mutual consistency (L162-171): over the WHOLE batch, sum over i != j of mean((p_i - s(p_j))^2), s = MC-Net's
  sharpening with T = 0.1; the target is not detached (index assignment into a zeros tensor keeps the graph),
  as `methods/mcnet.py::mutual_consistency`.
- Omni-correlation consistency (L173-262):
  1. Labeled voxels that BOTH branches predict correctly (argmax == label, background included) give memory
     entries: (projection_head1(x9_v) + projection_head2(x9_a)) / 2 at those voxels, with the heads in eval mode
     (the script calls `model.eval()` around them, L201-207: BN1d uses its running statistics and does not
     update them) and detached (`update_labeled_features` stores `.detach()` copies), with their true labels.
  2. The bank (`MemoryBank`) keeps the latest entry set of each labeled scan (keyed by the dataset index); each
     step, after storing the batch's labeled samples, it draws `memory_per_class` (256) entries per class,
     uniformly without replacement from the union over the stored scans (`random.sample`); a class with fewer
     stored entries gets none this step.
  3. Unlabeled voxels where the two branches' argmax agree: their x9 go through each branch's projection then
     prediction head (train mode, batch statistics over all those voxels); label and confidence = branch v's
     argmax and max softmax.
  4. `cal_correlation_matrix` (correlation.py L4-35): per predicted class, the `num_filtered` (12 800) most
     confident voxels (a class with <= 1 voxel is skipped); logits = feature . memory entry (raw dot products,
     NO normalisation) against the entries of every class that has them, concatenated; correlation = softmax of
     logits / 0.1 over the entries. Rows of all classes are stacked; branch a's and branch v's rows are the same
     voxels (the same labels and confidences select them).
  5. loss_o = sum over rows of sum_k -corr_a[k] log(corr_v[k] + 1e-8), divided by the number of rows; both
     matrices carry gradients (L260). 0 when no row exists (no memory, or no agreeing voxels).
- loss = lamda * loss_s + lambda_c * loss_c + lambda_o * loss_o (L268) with lambda_c = `consistency` (1) * r,
  lambda_o = `consistency_o` (0.05) * r, r = sigmoid_rampup(iter // 150, `consistency_rampup`), the counter
  incremented BEFORE (L264-266): step t (0-based) uses (t + 1) // 150.
- Inference: branch v alone (encoder1 + decoder1; `test_3d.py` builds `caml3d_v1` and the sliding window uses
  output [0]), `--nms` 0 (L17): no largest-component step. The paper reports the FINAL iteration (comment at
  train_caml.py L285-288; `test_3d.py` loads the file with `15000` in its name); the script also keeps a
  best-on-test checkpoint.

Defaults are the LA reference (train_caml.py argparse): lamda 0.5, consistency 1, consistency_o 0.05, ramp-up 40,
T 0.1, memory 256 per class, num_filtered 12 800; 15 000 iterations, batch 2 + 2, SGD 0.01 constant (there is no
lr update code) are suite settings. The released runs (the three `model/*/log.txt`) used seed 3407 (the README says
1337) and ramp-up 40 / 20 / 15 for 4 / 8 / 16 labeled scans: `consistency_rampup` per suite.

Choices and departures, each with its default:
- `embedding_dim` 32: the heads' width. The script's `--embedding_dim 64` only names the run folder; the net is
  built with its class default 32 (the 20,128,836 parameters are those of 32). 64 is available.
- The memory bank is keyed by scan in the reference; the Trainer does not pass sample indices, so here it is a
  FIFO of the last `memory_scans` labeled samples (default 4, the script's default `--labelnum`; the LA suites set
  it to the number of labeled scans, 4 / 8 / 16). With the harness's labeled stream (each labeled scan once per
  pass, in a new order each pass) the FIFO holds exactly one crop of every labeled scan at the end of every pass,
  as the reference's bank; within a pass it may hold two crops of one scan and none of another. It lives on the
  training device, is not checkpointed (after a resume it refills within memory_scans / labeled_bs steps; the
  reference cannot resume at all), and draws with torch's generator instead of Python's `random`.
- The heads, the memory products and the softmax run in float32 with autocast off (the reference trains in
  float32); the segmentation nets follow the Trainer's autocast.
- The labeled voxels are projected after selecting the correctly predicted ones (eval-mode BN1d is per row, so
  this equals projecting all and selecting), under no_grad (the bank stores detached copies anyway).
- Fewer than 2 agreeing unlabeled voxels: loss_o = 0 (the reference's BN1d would raise in train mode).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from benchmark.losses import binary_dice_loss
from benchmark.schedules import RampedConsistency, consistency_weight
from methods.base import METHODS, Labeled, Method, MethodContext
from methods.mcnet import mutual_consistency


@dataclass
class CAMLConfig(RampedConsistency):
    consistency: float = 1.0            # lambda_c (train_caml.py L51)
    consistency_rampup: float = 40.0    # released runs: 40 / 20 / 15 for 4 / 8 / 16 labeled scans
    consistency_o: float = 0.05         # lambda_o, the same ramp (L52, L25-27)
    lamda: float = 0.5                  # weight of the supervised Dice sum (L50)
    temperature: float = 0.1            # sharpening (L54)
    correlation_temperature: float = 0.1   # softmax of the memory products (correlation.py L4, not passed)
    memory_per_class: int = 256         # entries drawn per class each step (`--memory_num`)
    num_filtered: int = 12800           # most confident unlabeled voxels per class (`--num_filtered`)
    memory_scans: int = 4               # FIFO length in labeled samples: the number of labeled scans (see docstring)
    embedding_dim: int = 32             # heads' width: the net's default (the script's --embedding_dim 64 is unused)
    detach_target: bool = False         # the reference back-propagates through the sharpened target


class LabeledFeatureMemory:
    """The last `scans` labeled samples' memory entries, split by class; `sample` draws from their union."""

    def __init__(self, scans: int, num_classes: int) -> None:
        self.entries: deque[list[torch.Tensor]] = deque(maxlen=scans)
        self.num_classes = num_classes

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """One labeled sample: (N, dim) features with their (N,) labels."""
        self.entries.append([features[labels == c] for c in range(self.num_classes)])

    def sample(self, per_class: int) -> list[torch.Tensor | None]:
        """Per class, `per_class` entries drawn uniformly without replacement from all stored samples, or None
        when fewer are stored (MemoryBank.sample_labeled_features)."""
        out: list[torch.Tensor | None] = []
        for c in range(self.num_classes):
            parts = [entry[c] for entry in self.entries]
            sizes = [p.shape[0] for p in parts]
            total = sum(sizes)
            if not parts or total < per_class:
                out.append(None)
                continue
            chosen = torch.randperm(total, device=parts[0].device)[:per_class]
            picked, start = [], 0
            for part, size in zip(parts, sizes):   # gather without concatenating the whole bank
                local = chosen[(chosen >= start) & (chosen < start + size)] - start
                picked.append(part[local])
                start += size
            out.append(torch.cat(picked))
        return out


def correlation_rows(label: torch.Tensor, prob: torch.Tensor, num_classes: int, num_filtered: int) -> torch.Tensor:
    """Indices of the voxels whose correlation rows are built: per class (in class order) its `num_filtered` most
    confident voxels, most confident first; a class left with <= 1 voxel is skipped (cal_correlation_matrix)."""
    rows = []
    for c in range(num_classes):
        idx = (label == c).nonzero().squeeze(1)
        order = torch.sort(prob[idx], descending=True).indices[:num_filtered]
        if order.numel() > 1:
            rows.append(idx[order])
    return torch.cat(rows) if rows else label.new_zeros(0)


def correlation_matrix(features: torch.Tensor, memory: list[torch.Tensor | None], temperature: float
                       ) -> torch.Tensor | None:
    """softmax(features . memory^T / T) over the entries of every class that has more than one (raw dot products),
    or None without memory."""
    bank = [m for m in memory if m is not None and m.shape[0] > 1]
    if not bank or features.shape[0] == 0:
        return None
    return torch.softmax(features @ torch.cat(bank).T / temperature, dim=1)


def omni_correlation_loss(corr_v: torch.Tensor, corr_a: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """sum over rows of sum_k -corr_a log(corr_v + eps), divided by the number of rows (train_caml.py L258-260)."""
    return (-corr_a * torch.log(corr_v + eps)).sum() / corr_a.shape[0]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, *spatial, C)."""
    return x.movedim(1, -1)


@METHODS.register("caml", "CAML: V-Net + cross-sample-attention V-Net, mutual sharpened consistency and "
                          "omni-correlation consistency against a labeled memory bank (LA)")
class CAML(Method):
    Config = CAMLConfig
    dims = (3,)
    networks = ("vnet",)  # builds its own pair of V-Nets, caml-3d

    def __init__(self, cfg: CAMLConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        if ctx.num_classes != 2:
            raise ValueError(f"CAML uses the reference's binary Dice loss and needs 2 classes (got {ctx.num_classes})")
        self.model = ctx.build_network("caml-3d", **{**ctx.network_options, "feat_dim": cfg.embedding_dim})
        self.optimizer = ctx.make_optimizer(self.model.parameters())
        self.memory = LabeledFeatureMemory(cfg.memory_scans, ctx.num_classes)

    def _store_labeled(self, probs: list[torch.Tensor], emb_v: torch.Tensor, emb_a: torch.Tensor,
                       label: torch.Tensor) -> None:
        """Memory entries of the correctly predicted labeled voxels (heads in eval mode, no gradient)."""
        n = label.shape[0]
        correct = (probs[0][:n].argmax(1) == label) & (probs[1][:n].argmax(1) == label)
        heads = (self.model.projection_head1, self.model.projection_head2)
        modes = [h.training for h in heads]
        for h in heads:
            h.eval()
        with torch.no_grad():
            fv, fa = _channels_last(emb_v[:n]), _channels_last(emb_a[:n])
            for i in range(n):
                keep = correct[i]
                features = (heads[0](fv[i][keep]) + heads[1](fa[i][keep])) / 2
                self.memory.add(features, label[i][keep])
        for h, mode in zip(heads, modes):
            h.train(mode)

    def omni_correlation(self, probs: list[torch.Tensor], emb_v: torch.Tensor, emb_a: torch.Tensor,
                         label: torch.Tensor) -> torch.Tensor:
        """loss_o of one batch (labeled part first); also stores the labeled entries in the memory."""
        cfg, m, n = self.cfg, self.model, label.shape[0]
        zero = probs[0].new_zeros(())
        with torch.autocast(emb_v.device.type, enabled=False):
            emb_v, emb_a = emb_v.float(), emb_a.float()
            self._store_labeled(probs, emb_v, emb_a, label)
            memory = self.memory.sample(cfg.memory_per_class)
            conf_v, pred_v = probs[0][n:].max(1)
            agree = pred_v == probs[1][n:].argmax(1)
            if int(agree.sum()) < 2:
                return zero
            feat_v = m.prediction_head1(m.projection_head1(_channels_last(emb_v[n:])[agree]))
            feat_a = m.prediction_head2(m.projection_head2(_channels_last(emb_a[n:])[agree]))
            rows = correlation_rows(pred_v[agree], conf_v[agree], self.ctx.num_classes, cfg.num_filtered)
            corr_v = correlation_matrix(feat_v[rows], memory, cfg.correlation_temperature)
            corr_a = correlation_matrix(feat_a[rows], memory, cfg.correlation_temperature)
            if corr_v is None or corr_a is None:
                return zero
            return omni_correlation_loss(corr_v, corr_a)

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, labeled.image.shape[0]
        x = labeled.image if unlabeled is None else torch.cat([labeled.image, unlabeled])
        logits_v, logits_a, emb_v, emb_a = self.model(x)
        probs = [logits_v.float().softmax(1), logits_a.float().softmax(1)]
        sup = sum(binary_dice_loss(p[:n, 1], labeled.label == 1) for p in probs)
        cons = mutual_consistency(probs, cfg.temperature, cfg.detach_target)
        omni = self.omni_correlation(probs, emb_v, emb_a, labeled.label)
        lambda_c = cfg.consistency_weight(step + 1)
        lambda_o = consistency_weight(step + 1, cfg.consistency_o, cfg.consistency_rampup, cfg.rampup_unit)
        loss = cfg.lamda * sup + lambda_c * cons + lambda_o * omni
        self.update(loss, self.optimizer)
        return {"loss": loss.detach(), "loss_dice": sup.detach(), "loss_cons": cons.detach(),
                "loss_omni": omni.detach(), "cons_weight": torch.tensor(lambda_c),
                "omni_weight": torch.tensor(lambda_o)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.first(x)   # branch v (encoder1 + decoder1), as test_3d.py


__all__ = ["CAML", "CAMLConfig", "LabeledFeatureMemory", "correlation_matrix", "correlation_rows",
           "omni_correlation_loss"]
