"""SemSim (Xie, Wang et al., arXiv 2410.13486): FixMatch + intra- and cross-image semantic similarity + the
spatial-aware fusion module (SFM). Written from the paper (`shared/papers/semsim.md` §III, §IV-B); no code
was published (PROTOCOLS.md §3.5), so every choice the paper leaves open is listed below and is a config field.

Per step, with B_l labeled and B_u unlabeled images (paper: 8 + 8, 224 x 224, SGD 0.01):
- weak view x^w (flip) and strong views x^s1, x^s2 (colour + blur + CutMix of x^w), `methods.fixmatch`;
- one pass over [labeled, x^w] gives L_s = 0.5 (CE + Dice) (Eq. 2), p^w and the encoder's stage 2-4 maps,
  fused by the SFM into f~ (D = 128 channels at stage-3 resolution, H/4);
- one pass over the strong views, with channel dropout (p 0.5) on their encoder features (the paper's
  "feature level augmentation"), gives p^s and the strong views' fused features;
- L_u (Eq. 1): Dice of p^s against argmax p^w where max p^w >= tau (0.95);
- L_intra (Eqs. 4-6): M = row-softmax of the cosine affinity of f~(x^s1) (HW x HW); p^in = I(p^s) + I(p^s) M,
  p^w_1 likewise from x^w's own features; Dice of p^in against argmax p^w_1 where max p^w_1 >= tau;
- L_cross (Eqs. 7-13): per labeled image j and class c, prototypes G = mean of f~_l over the pixels of class
  c in each of the N sub-regions (Eq. 7); a pixel of x^s2 in region n is compared (cosine) with G_n of
  every labeled image (Eq. 8); p^cr(c) = sum_j e^m(j,c) / sum_c sum_j e^m(j,c) (Eq. 9); U(j) = KL of the
  j-th class distribution to the batch mean (Eqs. 10-11), weight U~ = mean_j exp(-r U(j)) (Eq. 12, r 1000);
  CE of p^cr against argmax p^w_2, times U~, on confident pixels (Eq. 13; which confidence: item 5 below);
- L = 1/2 (L_s + 0.5 L_u + 0.25 L_intra + 0.25 L_cross) (Eqs. 18-19). Inference: encoder + decoder only.
SemSim^- (`fusion="plain"`, preset `semsim-minus`) replaces the SFM by one plain convolution.

Departures and open choices (paper silent or ambiguous; choice made, and why):
1. Colour transform: brightness/contrast jitter 0.5 with p 0.8 plus Gaussian blur p 0.5 (UniMatch's medical
   recipe, which SemSim's 224 / tau 0.95 / CutMix setting resembles; saturation/hue do nothing on grey MRI).
   CutMix: p 0.5, area 2-40 %, aspect 0.3-3.3, each strong view with its own box and colour draw, pasting
   from a random other image of the same unlabeled batch (a derangement: never the image itself; before
   issue 19's audit a plain permutation let an image paste onto itself, i.e. no CutMix); all targets (p^w,
   p^w_1, p^w_2 and masks) are mixed by the same box (nearest-downsampled at feature resolution). The weak
   flip is added on top of the loader's SSL4MIS rot90/flip/rotation, which is the "[7]" (CTCT) pipeline the
   paper follows.
2. Which features: the ENCODER's stages 2-4 (the paper says x^s1 "is first sent into encoder h" and the
   maps then go to the SFM); stage 1 = the full-resolution level, so at 224 these are 112/56/28 px.
3. Affinity resolution: the SFM output is at the middle (stage-3) scale (Eq. 17 interpolates stages i and
   i+2 to stage i+1), so M is (H/4 W/4)^2 (3136^2 at 224) and I(.) bilinearly resizes p^s to H/4; L_intra
   and L_cross are computed at that resolution.
4. p^in is built from softmax probabilities and halved, p^in = (I(p) + I(p) M) / 2, so it is a distribution
   on the same scale as tau; I(.) resizes the probabilities p = softmax(z), not the logits (before issue 19's
   audit the logits were resized, then softmaxed, which this formula did not say) (`refine_on="logits"`:
   I(z) + I(z) M on logits, then softmax). M is row-stochastic
   (softmax over k2 for each pixel k1) and p^in(k1) = p(k1) + sum_k2 M(k1,k2) p(k2); with the symmetric
   cosine this is the paper's I(p)·M with the softmax over the other index. Affinity temperature: Eq. 4
   has none, but raw cosines (in [0, 1] after the SFM's ReLU) over 3136 pixels give near-uniform rows, so
   I(p) M is about the image's mean prediction: p^in then leans every pixel towards background, and with
   tau = 0.95 only pixels of background-dominated images pass. The paper says M "delineates the regions
   belonging to the same object", which needs peaked rows: `affinity_temperature` = 0.1 by default (1.0 in
   the `paper-literal` preset).
5. Cross-image temperature and mask: Eqs. 9-12 are used as written on raw cosines (`cross_temperature`
   = 1); r = 1000 fits that reading: on real ACDC (3 cases, first steps) U~ averaged 0.53-0.58 at T = 1,
   but 0.006-0.03 at T = 0.1, which leaves no L_cross.
   But then max p^cr <= e/(e + 3/e) = 0.71 for 4 classes, so Eq. 13's mask 1(max p^w_2 >= 0.95) is always
   empty. We take the mask from the decoder's weak confidence, max p^w >= tau (Eq. 1's mask;
   `cross_mask="decoder"`), keeping argmax p^w_2 as the pseudo-label; `cross_mask="cross"` is Eq. 13
   literally (useful only with cross_temperature < 1).
6. Eqs. 10-11 take a KL of similarity vectors; we use the class distributions softmax_c(m(j)/T) (the terms
   of Eq. 9 for one labeled image). U~ is detached (a weight, not a target). Gradients flow from L_cross into
   both the unlabeled features and the labeled prototypes (`detach_prototypes` to stop the latter).
7. Sub-regions: N is read as the number of regions PER SIDE (N x N grid, delta = H'/N): Table V's values
   1, 2, 4, 8, 14 all divide 56 (the stage-3 side at 224), which square regions with N regions in total
   could not give for 2, 8, 14. `region_layout="total"` takes N as the total count (grid as square as N allows).
   The labels are nearest-downsampled to the fused map's size for Eq. 7 (the paper does not say how).
   Fallbacks when class c is absent from region n of labeled image j: image j's prototype of c; if c is
   absent from image j, the labeled batch's prototype of c; if absent from the whole batch, c is left out
   of Eqs. 9-11 for every j and pixels pseudo-labelled c are dropped from L_cross.
8. SFM details (Eqs. 14-17): 1x1 conv per stage to D = 128; windows of `sfm_window` tokens per side at
   stage 4 (2x and 4x that at stages 3 and 2), i.e. S = 28/4 = 7 windows per side at 224 (S is not given;
   sequence length 16^2 + 8^2 + 4^2 = 336); one pre-norm transformer block (4 heads, MLP ratio 4, GELU, no
   positional embedding: the paper names none); fusion = 3x3 conv (3D -> D, no bias) + BN + ReLU at stage 3.
   Where the stage-4 side is not a multiple of `sfm_window`, the window is gcd(side, sfm_window).
   Parameters: SFM 0.670 M (paper 0.79 M), UNet 1.814 M, total 2.484 M (paper 2.60 M); the paper does not
   give enough detail (depth, heads, MLP ratio, projections) to match its count.
9. SemSim^-'s "simpler convolution": Eq. 17 without the transformer, a 1x1 conv (32+64+128 -> D) + BN + ReLU
   over the stage-3-sized maps (+29 k parameters: 1.843 M in total; the paper lists 1.81 M).
10. L_u / L_intra use the thresholded Dice `benchmark.losses.dice_loss(..., mask=)` (Dice over the kept pixels,
   background included, as UniMatch's medical code); L_cross divides by all pixels (FixMatch's 1/|B_u| sum).
11. Channel dropout (`feature_dropout` 0.5, Dropout2d) perturbs every encoder level of the strong views
   before the decoder and the SFM; the paper says only "channel dropout of 50 % probability".
12. Epochs: "300 epochs" is read as passes over the unlabeled set (UniMatch's epoch), i.e. 160 / 155 / 147
   iterations per epoch at 1 / 3 / 7 labeled patients with 8 unlabeled per batch; the suites set iterations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import ConfigError
from benchmark.losses import confidence_mask, dice_ce_loss, dice_loss, masked_ce_loss
from methods.base import METHODS, Labeled, Method, MethodContext
from methods.fixmatch import WeakStrongConfig, derangement, strong_view, weak_view

#: encoder levels fused by the SFM: stages 2, 3, 4 of the paper = levels 1, 2, 3 of our UNet (level 0 = full res)
FUSED_LEVELS = (1, 2, 3)


# ------------------------------------------------------------------------------------ fusion modules
class ScaleInteraction(nn.Module):
    """Eq. 15: pre-norm multi-head self-attention and MLP, each with a residual, on (N, L, D) tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        y = self.norm1(t)
        t = t + self.attn(y, y, y, need_weights=False)[0]
        return t + self.mlp(self.norm2(t))


def _to_windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, D, H, W) -> (B * H/wh * W/ww, wh * ww, D): non-overlapping windows as token sequences."""
    b, d, h, w = x.shape
    x = x.view(b, d, h // wh, wh, w // ww, ww).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b * (h // wh) * (w // ww), wh * ww, d)


def _from_windows(t: torch.Tensor, b: int, h: int, w: int, wh: int, ww: int) -> torch.Tensor:
    """Inverse of `_to_windows`."""
    d = t.shape[-1]
    x = t.view(b, h // wh, w // ww, wh, ww, d).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, d, h, w)


class SpatialFusion(nn.Module):
    """The spatial-aware fusion module (§III-D): patch matching across three scales (Eq. 14), scale interaction
    (Eq. 15), scale splitting (Eq. 16) and conv fusion at the middle scale (Eq. 17)."""

    def __init__(self, in_channels: tuple[int, int, int] = (32, 64, 128), dim: int = 128, heads: int = 4,
                 mlp_ratio: float = 4.0, depth: int = 1, window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.blocks = nn.Sequential(*(ScaleInteraction(dim, heads, mlp_ratio) for _ in range(depth)))
        self.fuse = nn.Sequential(nn.Conv2d(3 * dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU())

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        xs = [p(f) for p, f in zip(self.proj, feats)]
        b = xs[0].shape[0]
        h4, w4 = xs[2].shape[-2:]
        wh, ww = math.gcd(h4, self.window), math.gcd(w4, self.window)
        sizes = [(wh * 2 ** (2 - k), ww * 2 ** (2 - k)) for k in range(3)]   # the same box at every scale
        seqs = [_to_windows(x, *s) for x, s in zip(xs, sizes)]
        lengths = [s.shape[1] for s in seqs]
        t = self.blocks(torch.cat(seqs, dim=1))
        outs = [_from_windows(part, b, *x.shape[-2:], *s) for part, x, s in zip(t.split(lengths, 1), xs, sizes)]
        size = outs[1].shape[-2:]
        up = [o if o.shape[-2:] == size else F.interpolate(o, size=size, mode="bilinear", align_corners=False)
              for o in outs]
        return self.fuse(torch.cat(up, dim=1))


class PlainFusion(nn.Module):
    """SemSim^-: the three maps resized to the middle scale, concatenated, 1x1 conv + BN + ReLU."""

    def __init__(self, in_channels: tuple[int, int, int] = (32, 64, 128), dim: int = 128) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(sum(in_channels), dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU())

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[1].shape[-2:]
        up = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
              for f in feats]
        return self.fuse(torch.cat(up, dim=1))


# ------------------------------------------------------------------------------ intra-image (Eqs. 4-5)
def affinity(feat: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Eq. 4: (B, D, h, w) -> (B, hw, hw), row k1 = softmax over k2 of cos(f(k1), f(k2)) / temperature."""
    f = F.normalize(feat.float().flatten(2), dim=1)
    return (f.transpose(1, 2) @ f / temperature).softmax(-1)


def resize_prediction(logits: torch.Tensor, size: tuple[int, int], on: str = "probs") -> torch.Tensor:
    """I(.) of Eq. 5: the decoder's (B, C, H, W) output bilinearly resized to `size`, as probabilities
    (on="probs": I(softmax(z)), still a distribution per pixel) or as logits (on="logits": I(z))."""
    x = logits.float().softmax(1) if on == "probs" else logits.float()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def refine(pred: torch.Tensor, m: torch.Tensor, on: str = "probs") -> torch.Tensor:
    """Eq. 5 on a prediction already at the affinity's resolution (`resize_prediction`) -> probabilities.

    on="probs": `pred` = probabilities p, returns (p + p M) / 2; on="logits": `pred` = logits z, returns
    softmax(z + z M). Pixel k1 gets sum_k2 M(k1, k2) pred(k2) added (M row-stochastic)."""
    b, c, h, w = pred.shape
    flat = pred.float().flatten(2)
    out = (flat + flat @ m.transpose(1, 2)).view(b, c, h, w)
    return out / 2 if on == "probs" else out.softmax(1)


# ------------------------------------------------------------------------------ cross-image (Eqs. 7-12)
def region_grid(n: int, layout: str = "per_side") -> tuple[int, int]:
    """Rows x columns of the sub-region grid: n x n (`per_side`), or n regions in all, as square as possible."""
    if layout == "per_side":
        return n, n
    rows = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    return rows, n // rows


def region_index(h: int, w: int, grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(h*w,) region id of each pixel, row-major, for a grid of (rows, cols) equal-as-possible sub-regions."""
    r = torch.arange(h, device=device) * grid[0] // h
    c = torch.arange(w, device=device) * grid[1] // w
    return (r[:, None] * grid[1] + c[None, :]).flatten()


def region_prototypes(feat: torch.Tensor, labels: torch.Tensor, num_classes: int, grid: tuple[int, int]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 with the fallbacks: (B, D, h, w) features and (B, h, w) labels -> prototypes (B, C, R, D) for the
    R = rows*cols sub-regions and (C,) whether class c occurs anywhere in the batch.

    Region n of image j has the mean feature of its class-c pixels; where there are none, image j's class-c
    mean; where image j has no class c, the batch's class-c mean; zeros where the batch has none."""
    b, d, h, w = feat.shape
    rid = region_index(h, w, grid, feat.device)
    regions = F.one_hot(rid, grid[0] * grid[1]).to(feat.dtype)                         # (P, R)
    onehot = F.one_hot(labels.long().flatten(1), num_classes).to(feat.dtype)            # (B, P, C)
    f = feat.flatten(2)                                                                 # (B, D, P)
    sums = torch.einsum("bpc,bdp,pr->bcrd", onehot, f, regions)
    counts = torch.einsum("bpc,pr->bcr", onehot, regions)[..., None]                   # (B, C, R, 1)
    img_sums, img_counts = sums.sum(2, keepdim=True), counts.sum(2, keepdim=True)
    all_sums, all_counts = img_sums.sum(0, keepdim=True), img_counts.sum(0, keepdim=True)
    proto = torch.where(counts > 0, sums / counts.clamp_min(1), img_sums / img_counts.clamp_min(1))
    proto = torch.where((counts > 0) | (img_counts > 0), proto, all_sums / all_counts.clamp_min(1))
    return proto, all_counts.flatten() > 0


def query_similarity(feat: torch.Tensor, protos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Eq. 8: cosine of each pixel of (B_u, D, h, w) with its own region's prototypes of every labeled image
    and class -> m (B_u, B_l, C, h*w)."""
    h, w = feat.shape[-2:]
    rid = region_index(h, w, grid, feat.device)
    f = F.normalize(feat.float().flatten(2), dim=1)                                    # (B_u, D, P)
    g = F.normalize(protos.float(), dim=-1)[:, :, rid]                                 # (B_l, C, P, D)
    return torch.einsum("udp,jcpd->ujcp", f, g)


def cross_prediction(m: torch.Tensor, present: torch.Tensor, temperature: float, r: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 9-12 from similarities m (B_u, B_l, C, P): (log p^cr (B_u, C, P), uncertainty weight U~ (B_u, P)).

    Classes absent from the labeled batch (`present` False) get no probability."""
    logits = (m / temperature).masked_fill(~present.view(1, 1, -1, 1), float("-inf"))
    log_pcr = torch.logsumexp(logits, 1) - torch.logsumexp(logits.flatten(1, 2), 1)[:, None]
    q = logits.softmax(2)                                                               # class distribution per j
    q_mean = q.mean(1, keepdim=True)                                                    # Eq. 10
    kl = torch.where(q > 0, q * (torch.log(q.clamp_min(1e-30)) - torch.log(q_mean.clamp_min(1e-30))),
                     torch.zeros_like(q)).sum(2)                                        # Eq. 11: (B_u, B_l, P)
    return log_pcr, torch.exp(-r * kl).mean(1)                                          # Eq. 12


# ------------------------------------------------------------------------------------------- method
@dataclass
class SemSimConfig(WeakStrongConfig):
    tau: float = 0.95
    lambda_u: float = 0.5
    lambda_intra: float = 0.25
    lambda_cross: float = 0.25
    use_u: bool = True
    use_intra: bool = True
    use_cross: bool = True
    stream_intra: int = 1            # which strong view feeds p^in (Table VI)
    stream_cross: int = 2            # ... p^cr
    streams_u: tuple = (1,)          # ... p^s (several: L_u is their mean, Table VI's decoder-only rows)
    fusion: str = "sfm"              # sfm | plain (SemSim^-)
    dim: int = 128                   # D
    sfm_heads: int = 4
    sfm_mlp_ratio: float = 4.0
    sfm_depth: int = 1
    sfm_window: int = 4              # window side in tokens at stage 4 (x2 at stage 3, x4 at stage 2)
    sub_regions: int = 4             # N
    region_layout: str = "per_side"  # per_side (N x N grid) | total (N regions in all)
    r: float = 1000.0
    cross_temperature: float = 1.0
    cross_mask: str = "decoder"      # decoder (max p^w >= tau) | cross (Eq. 13 as written: max p^w_2 >= tau)
    affinity_temperature: float = 0.1
    refine_on: str = "probs"         # probs | logits
    feature_dropout: float = 0.5     # channel dropout on the strong views' encoder features
    detach_prototypes: bool = False

    def __post_init__(self) -> None:
        problems = [f"{k} must be one of {v} (got {getattr(self, k)!r})" for k, v in
                    (("fusion", ("sfm", "plain")), ("region_layout", ("per_side", "total")),
                     ("refine_on", ("probs", "logits"))) if getattr(self, k) not in v]
        if not self.streams_u or min(self.streams_u, default=1) < 1 or min(self.stream_intra, self.stream_cross) < 1:
            problems.append("strong streams are numbered from 1 and streams_u must not be empty")
        if problems:
            raise ConfigError("semsim: " + "; ".join(problems))


def _table_iv(intra: bool, cross: bool, u: bool) -> dict[str, bool]:
    return {"use_intra": intra, "use_cross": cross, "use_u": u}


@METHODS.register("semsim", "FixMatch + intra-image affinity + cross-image prototype consistency + SFM (Xie et al. 2024)")
class SemSim(Method):
    Config = SemSimConfig
    networks = ("unet",)  # fuses the plain UNet's encoder features
    presets = {
        # Table IV (ACDC 1 case): which of L_intra, L_cross, L_u are on
        "t4-1": _table_iv(False, False, True), "t4-2": _table_iv(True, False, False),
        "t4-3": _table_iv(False, True, False), "t4-4": _table_iv(True, True, False),
        "t4-5": _table_iv(True, False, True), "t4-6": _table_iv(False, True, True),
        "t4-7": _table_iv(True, True, True),
        # Table V (ACDC 10 %): number of sub-regions N
        **{f"n{n}": {"sub_regions": n} for n in (1, 2, 4, 8, 14)},
        # Table VI (ACDC 10 %): strong view feeding p^in / p^cr / p^s; the last two: decoder predictions only
        "t6-s1-s1-s1": {"stream_intra": 1, "stream_cross": 1, "streams_u": (1,)},
        "t6-s1-s1-s2": {"stream_intra": 1, "stream_cross": 1, "streams_u": (2,)},
        "t6-s1-s2-s1": {"stream_intra": 1, "stream_cross": 2, "streams_u": (1,)},
        "t6-s1-s2-s2": {"stream_intra": 1, "stream_cross": 2, "streams_u": (2,)},
        "t6-s1-s2-s3": {"stream_intra": 1, "stream_cross": 2, "streams_u": (3,)},
        "t6-dec-s1s2": {"use_intra": False, "use_cross": False, "streams_u": (1, 2)},
        "t6-dec-s1s2s3": {"use_intra": False, "use_cross": False, "streams_u": (1, 2, 3)},
        # Table I: SemSim^-
        "semsim-minus": {"fusion": "plain"},
        # Eqs. 4 and 13 exactly as printed (see the docstring, items 4-5: L_cross's mask is then always empty)
        "paper-literal": {"affinity_temperature": 1.0, "cross_mask": "cross"},
    }

    def __init__(self, cfg: SemSimConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network()
        widths = tuple(self.model.encoder.blocks[i][0].out_channels for i in FUSED_LEVELS)
        self.fusion = (SpatialFusion(widths, cfg.dim, cfg.sfm_heads, cfg.sfm_mlp_ratio, cfg.sfm_depth, cfg.sfm_window)
                       if cfg.fusion == "sfm" else PlainFusion(widths, cfg.dim))
        self.optimizer = ctx.make_optimizer([*self.model.parameters(), *self.fusion.parameters()])

    # -------------------------------------------------------------------------------- pieces
    def _fused(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.fusion([feats[i] for i in FUSED_LEVELS])

    def _intra(self, logits: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """p^in / p^w_1 (Eq. 5): the decoder's prediction resized to the fused map and refined by its affinity."""
        with torch.autocast(fused.device.type, enabled=False):   # similarities in fp32 under bf16 training
            small = resize_prediction(logits, fused.shape[-2:], self.cfg.refine_on)
            return refine(small, affinity(fused.float(), self.cfg.affinity_temperature), self.cfg.refine_on)

    def _cross(self, fused: torch.Tensor, protos: torch.Tensor, present: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p^cr (B, C, h, w), U~ (B, h, w)) of fused unlabeled features against the prototypes."""
        grid = region_grid(self.cfg.sub_regions, self.cfg.region_layout)
        with torch.autocast(fused.device.type, enabled=False):
            m = query_similarity(fused.float(), protos.float(), grid)
            log_p, weight = cross_prediction(m, present, self.cfg.cross_temperature, self.cfg.r)
        shape = fused.shape[-2:]
        return log_p.unflatten(-1, shape), weight.unflatten(-1, shape)

    # ------------------------------------------------------------------------------ the step
    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError("SemSim needs unlabeled images in every batch (batch_size > labeled_batch_size)")
        cfg, n, zero = self.cfg, labeled.image.shape[0], labeled.image.new_zeros(())
        need_feat = cfg.use_intra or cfg.use_cross
        weak = weak_view(unlabeled, cfg)
        logits, feats = self.model.forward_with_encoder_features(torch.cat([labeled.image, weak]))
        sup = dice_ce_loss(logits[:n], labeled.label)
        logits_w = logits[n:].detach()
        pseudo_w, mask_w = confidence_mask(logits_w.float().softmax(1), cfg.tau)

        used = set(cfg.streams_u if cfg.use_u else ()) | ({cfg.stream_intra} if cfg.use_intra else set()) \
            | ({cfg.stream_cross} if cfg.use_cross else set())
        k = max(used) if used else 0
        b = weak.shape[0]
        # CutMix partner: another image of the batch (a derangement), as item 1 says; alone, an image keeps its own
        views = [strong_view(weak, cfg, partner=derangement(b) if b >= 2 else None) for _ in range(k)]
        if views:
            s_feats = self.model.encoder(torch.cat([v.image for v in views]))
            if cfg.feature_dropout > 0:
                s_feats = [F.dropout2d(f, cfg.feature_dropout, training=True) for f in s_feats]
            s_logits = self.model.decoder(s_feats).split(b)

        losses = {"loss_u": zero, "loss_intra": zero, "loss_cross": zero}
        logs: dict[str, torch.Tensor] = {}
        if cfg.use_u:
            terms = [dice_loss(s_logits[i - 1].float().softmax(1), views[i - 1].targets(pseudo_w),
                               mask=views[i - 1].targets(mask_w)) for i in cfg.streams_u]
            losses["loss_u"] = torch.stack(terms).mean()
            logs["mask_ratio"] = mask_w.float().mean()
        if need_feat:
            fused = self._fused(feats)
            fused_l, fused_w = fused[:n], fused[n:].detach()
            s_fused = self._fused(s_feats).split(b)
        if cfg.use_intra:
            i = cfg.stream_intra - 1
            with torch.no_grad():
                p1_w = self._intra(logits_w, fused_w)
                pseudo1, mask1 = confidence_mask(p1_w, cfg.tau)
            p_in = self._intra(s_logits[i], s_fused[i])
            losses["loss_intra"] = dice_loss(p_in, views[i].targets(pseudo1), mask=views[i].targets(mask1))
            logs["mask_ratio_intra"] = mask1.float().mean()
        if cfg.use_cross:
            i = cfg.stream_cross - 1
            small = F.interpolate(labeled.label[:, None].float(), size=fused_l.shape[-2:], mode="nearest")[:, 0].long()
            grid = region_grid(cfg.sub_regions, cfg.region_layout)
            with torch.autocast(fused_l.device.type, enabled=False):
                protos, present = region_prototypes(fused_l.float(), small, logits.shape[1], grid)
            with torch.no_grad():
                log_p2, _ = self._cross(fused_w, protos.detach(), present)
                pseudo2, mask2 = confidence_mask(log_p2.exp(), cfg.tau)
                if cfg.cross_mask == "decoder":
                    mask2 = F.interpolate(mask_w[:, None].float(), size=mask2.shape[-2:], mode="nearest")[:, 0] > 0
                mask2 = mask2 & present[pseudo2]
            log_pcr, weight = self._cross(s_fused[i], protos.detach() if cfg.detach_prototypes else protos, present)
            losses["loss_cross"] = masked_ce_loss(log_pcr, views[i].targets(pseudo2), views[i].targets(mask2),
                                                  weight=weight.detach())
            logs.update(mask_ratio_cross=mask2.float().mean(), uncertainty_weight=weight.detach().mean())
        unsup = cfg.lambda_u * losses["loss_u"] + cfg.lambda_intra * losses["loss_intra"] \
            + cfg.lambda_cross * losses["loss_cross"]
        loss = 0.5 * (sup + unsup)
        self.update(loss, self.optimizer)
        return {"loss": loss.detach(), "loss_sup": sup.detach(), **{k: v.detach() for k, v in losses.items()}, **logs}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
