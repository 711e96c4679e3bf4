"""DK-UXNet (Semi-supervised medical image segmentation via query distribution consistency; `shared/papers/
dk-uxnet.md` §2.3, §3.1-3.4, Eqs. 3-5, Table 2): a 3D UX-Net + kMaX decoder + MaxQuery head (`dk-uxnet` net,
`benchmark/nets/dk_uxnet.py`) trained with a dual-contrastive loss on weak/strong views. Facts:
../shared/PROTOCOLS-3D-DATASETS.md §B.4 (Rows21/DK-UXNet@d1d34e2 `main_train.py`: supervised only) and §B.5
(what the paper leaves open).

The step (paper §2.1, §2.3):
- every sample of the batch (labeled and unlabeled) gives a weak view (the loader's crop / rotation / flip as is,
  `la-rotflip-crop`) and a strong view (the weak view + intensity-only changes, `strong_view`: voxels stay aligned
  with the label and with the weak view); ONE forward of all 2B views;
- L_sup = CE + Dice (§2.3, "L_sup = L_ce + L_dc", the second term read as Dice) on the labeled views' segmentation
  output; L_segc = InfoNCE (Eq. 3-4, cosine similarity, SimCLR denominator over k != i) on the segmentation
  outputs, L_qdc = the same on the query distribution Q; L_dc = L_segc + L_qdc; L_l = L_sup + lambda L_dc,
  L_u = lambda L_dc (Eq. 5); the step minimises L_l + L_u, each a mean over its own views;
- `predict` returns the chosen segmentation output's logits (no query response is materialised).
AdamW lr 1e-4, batch, iterations are suite settings. Paper batch 4 = "two training samples" x 2 views (§3.2): in
Trainer terms batch_size 2, labeled_batch_size 1. "4000 epochs" (§3.2): read as epoch = one pass over the labeled
volumes at the labeled batch per step, i.e. iterations = 4000 x labeled scans / labeled_batch_size (8 labeled, 1 per
step -> 32,000; 4 -> 16,000; 16 -> 64,000; fully supervised, 80 scans at 2 per step -> 160,000).

Choices the paper leaves open (Config fields; the reason for each default is on its line):
- contrast "voxel" (default): at every voxel the two views' vectors of one sample are the positive pair and the
  same voxel in the other samples' views are the negatives; the mean over voxels is Eq. 4's 1/(HWD). "sample":
  each view's whole flattened output is one vector, SimCLR over the 2B views; Eq. 4 taken literally there
  (`literal_hwd`) multiplies the loss by 1/(HWD) (~1e-6 at 112x112x80), which is why it is off by default.
- Pairing labeled and unlabeled views: one InfoNCE over ALL 2B views (`dc_negatives: all`). With 1 labeled + 1
  unlabeled sample per batch, an InfoNCE within the labeled (or unlabeled) views alone has only the positive in its
  denominator and is identically 0; pooled, every anchor has 2 negatives. The per-anchor losses are then split into
  the labeled anchors' mean (L_dc of L_l) and the unlabeled anchors' mean (L_dc of L_u). `same_kind` contrasts each
  kind within itself (needs >= 2 samples of each kind per batch; `check` says so).
- Q (`q_source`): "groups" = the softmax-over-queries response summed within each query group (the released
  code's cluster assignment, the thing the released loss compares with the label, the paper's "query
  distribution"); "query_logits" = the MaxQuery aggregation (§2.1 calls Q_d "query distribution logits").
- z of L_segc (`segc_on`): "probs" (softmax of the segmentation output: bounded, sums to 1, cosine is meaningful
  from the first step) or "logits".
- Segmentation output (`seg_output`) read by L_sup, L_segc and inference: "query" = the MaxQuery aggregation, the
  paper's "final segmentation outputs" (§2.2.3, L_sup "between the final outputs and the ground truth"); "conv" =
  the UX-Net conv head (what the released code's DiceCE reads).
- Dice (`dice`): "per_sample" = linear denominator, per sample, background included (`dice_loss_per_sample`,
  equal to MONAI's DiceCELoss Dice that the released main_train.py uses); "ssl4mis" = the harness's SSL4MIS Dice.
  CE and Dice weigh 1 each (L_sup = L_ce + L_dice; no 1/2).
- Query supervision (`query_supervision`): "none" (Eq. 5 has no such term); "released" adds query_weight (0.1) x the
  released code's group log-loss -sum_voxels sum_g y_g log Q_g (mean over views; labels clamped to <= G - 1, i.e.
  <= 2 with its 3 groups), summed over voxels, NOT normalised (`query_reduction: sum`; "mean" divides by the
  voxels). §2.1 says the "ground-truth query distribution" supervises the cluster outputs, without a formula.
- Unlabeled data (`use_unlabeled`): True draws unlabeled images and applies L_u; False trains on labeled batches
  only (the Trainer then fills the whole batch with labeled samples). Table 2 (§3.4) says "we first only use
  labeled images": its first row (L_seg) does (preset seg-only); its last row equals Table 1's semi-supervised 10%
  result, so it uses them; the paper does not say for the L_qdc / L_segc rows: presets qdc / segc use them (the
  rows then differ from the last by one term); `use_unlabeled: false` gives the labeled-only reading.
- Strong view (intensity-only): Gaussian noise, Gaussian blur, brightness (multiplicative) and contrast (about the
  sample mean), in the order and with the ranges of nnU-Net's default intensity augmentations (`get_moreDA_
  augmentation`: noise variance U[0, 0.1], blur sigma 0.5-1, brightness and contrast factors 0.75-1.25; read
  through the code index, not in shared/) but strong-view probabilities (jitter 0.8 as FixMatch/UniMatch's colour
  p, blur and noise 0.5; nnU-Net's are 0.1-0.2). No clamping: LA volumes are z-scored, so device_augment's
  colour_jitter (which clamps to [0, 1]) does not fit; its `gaussian_blur` is reused. No geometric change, so the
  voxelwise positive pair and the label stay aligned.
- L_sup on both views of each labeled sample (`sup_views: both`): the strong view keeps the label valid.
- tau 0.1 (SimCLR's ImageNet temperature; the paper follows SimCLR but gives none), lambda_dc 0.1 (the usual LA
  consistency weight, UA-MT / URPC; constant: Eq. 5 has no ramp-up).
- Net (passed to `dk-uxnet`): layout "paper" (kMaX on encoder stages 2-4, §2.2.1) | "released"; 128 queries of dim
  256 and 2 kMaX layers per scale (kMaX-DeepLab defaults, as the released code); query_groups () = the net's
  default per layout (paper: even split per class; released: 16/4/108); feature_size / hidden_size 48 / 768 (3D
  UX-Net); `checkpoint` = activation checkpointing (off by default: same outputs and gradients, slower; turn it
  on where memory is short: 4 views at 32^3 peak at 3.3 GB on CPU in fp32, so 4 x 112x112x80 needs roughly 30x).
  The suite's `network_options` belong to its V-Net (`train.network: vnet`) and are not passed on.
- Memory (`view_chunk`): the 2B views go through the net in one forward by default (the paper's batch). With
  `view_chunk: k` a step first runs the views k at a time without a graph (kMaX BatchNorm statistics restored),
  computes the whole loss and its gradient with respect to the outputs, then runs each chunk again with a graph
  and back-propagates that gradient into it (gradient caching): the InfoNCE still sees every view, the peak
  memory is one chunk's, a step costs one more forward. The only difference from one forward is that kMaX's
  BatchNorm normalises each chunk by its own statistics, as on k-view-per-GPU DataParallel (the paper's 4
  P100s with batch 4); the net has no dropout (drop path 0), so both passes compute the same outputs. Measured
  on CPU, fp32, 112x112x80 with `checkpoint`: ~5.5 GB per view, so 1 + 1 samples (4 views) need ~23 GB in one
  forward and ~12 GB with `view_chunk: 2`.

Presets: seg-only / qdc / segc / full (= the default) are Table 2's rows; supervised (Table 1 "ours (fully
supervised)": L_sup only, no unlabeled draws, usable with all 80 scans labeled; the same config as seg-only, two
names so each table row names its own); released (the released main_train.py: 1.0 DiceCE on the conv head + 0.1 x
the un-normalised group log-loss, layout released, labeled data only, no contrast).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from benchmark.config import ConfigError
from benchmark.data.device_augment import gaussian_blur
from benchmark.losses import dice_loss, dice_loss_per_sample, info_nce, one_hot
from benchmark.nets.kmax import kept_norm_statistics
from methods.base import METHODS, Labeled, Method, MethodContext

NET = "dk-uxnet"
CHOICES = {"contrast": ("voxel", "sample"), "dc_negatives": ("all", "same_kind"), "segc_on": ("probs", "logits"),
           "q_source": ("groups", "query_logits"), "seg_output": ("query", "conv"), "dice": ("per_sample", "ssl4mis"),
           "query_supervision": ("none", "released"), "query_reduction": ("sum", "mean"),
           "sup_views": ("both", "weak"), "layout": ("paper", "released")}


@dataclass
class DKUXNetConfig:
    # dual-contrastive loss (Eqs. 3-5)
    tau: float = 0.1                  # InfoNCE temperature: SimCLR's ImageNet value (paper: unstated)
    lambda_dc: float = 0.1            # lambda of Eq. 5: the usual LA consistency weight (paper: unstated), constant
    segc: bool = True                 # L_segc on (Table 2 rows 3-4)
    qdc: bool = True                  # L_qdc on (Table 2 rows 2, 4)
    contrast: str = "voxel"           # voxel: per-voxel InfoNCE, mean over voxels = Eq. 4's 1/(HWD) | sample: SimCLR
    literal_hwd: bool = False         # contrast sample only: times 1/(HWD) as Eq. 4 writes it (shrinks it ~1e6)
    dc_negatives: str = "all"         # all: one InfoNCE over all views of the batch | same_kind: each kind apart
    segc_on: str = "probs"            # z of L_segc: softmax of the segmentation output (bounded) | logits
    q_source: str = "groups"          # Q: query-response group sums (released cluster assignment) | query_logits
    use_unlabeled: bool = True        # False: labeled batches only (Table 2 row 1 "only labeled images", supervised)
    # supervision
    seg_output: str = "query"         # query: MaxQuery "final outputs" (paper §2.2.3) | conv: UX-Net head (released)
    dice: str = "per_sample"          # per_sample: MONAI DiceCELoss's Dice (released code) | ssl4mis
    sup_views: str = "both"           # L_sup on both views of a labeled sample (intensity-only strong view) | weak
    query_supervision: str = "none"   # none (Eq. 5) | released: + query_weight x group log-loss (main_train.py L204)
    query_weight: float = 0.1         # released main_train.py L185-186: 1.0 DiceCE + 0.1 qd
    query_reduction: str = "sum"      # sum over voxels (released, not normalised) | mean over voxels
    # strong view (intensity only; nnU-Net's default ranges, strong-view probabilities; see the module docstring)
    noise_p: float = 0.5
    noise_std: float = 0.3            # std ~ U[0, noise_std] (nnU-Net: variance U[0, 0.1])
    blur_p: float = 0.5
    blur_sigma_min: float = 0.5       # nnU-Net GaussianBlur sigma (0.5, 1.0)
    blur_sigma_max: float = 1.0
    jitter_p: float = 0.8             # brightness + contrast together (FixMatch / UniMatch colour p 0.8)
    brightness: float = 0.25          # factor ~ U[1 - b, 1 + b] (nnU-Net 0.75-1.25)
    contrast_range: float = 0.25      # factor about the sample mean ~ U[1 - c, 1 + c] (nnU-Net 0.75-1.25)
    # the network (`dk-uxnet` constructor options)
    layout: str = "paper"             # paper: kMaX on encoder stages 2-4 (§2.2.1) | released: on decoder features
    num_queries: int = 128            # kMaX-DeepLab default, released code
    query_dim: int = 256              # kMaX-DeepLab default, released code
    query_groups: tuple = ()          # (): the net's default (paper: even split per class; released 16/4/108)
    layers_per_scale: int = 2         # kMaX DEC_LAYERS [2, 2, 2], released code
    feature_size: int = 48            # 3D UX-Net
    hidden_size: int = 768            # 3D UX-Net encoder5 width
    checkpoint: bool = False          # activation checkpointing (same outputs, less memory, more time)
    view_chunk: int = 0               # 0: one forward of all views (paper) | k: k views at a time (memory; see docstring)

    def __post_init__(self) -> None:
        self.query_groups = tuple(self.query_groups)
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"dk-uxnet: {name} must be one of {', '.join(valid)} (got {getattr(self, name)!r})")
        if not self.tau > 0:
            raise ConfigError(f"dk-uxnet: tau is the InfoNCE temperature and must be > 0 (got {self.tau})")
        for name in ("lambda_dc", "query_weight", "noise_std", "brightness", "contrast_range"):
            if getattr(self, name) < 0:
                raise ConfigError(f"dk-uxnet: {name} must be >= 0 (got {getattr(self, name)})")
        if self.view_chunk < 0:
            raise ConfigError(f"dk-uxnet: view_chunk must be 0 (all views at once) or a number of views (got "
                              f"{self.view_chunk})")
        for name in ("noise_p", "blur_p", "jitter_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"dk-uxnet: {name} is a probability in [0, 1] (got {getattr(self, name)})")
        if not 0 < self.blur_sigma_min <= self.blur_sigma_max:
            raise ConfigError(f"dk-uxnet: need 0 < blur_sigma_min <= blur_sigma_max (got {self.blur_sigma_min}, "
                              f"{self.blur_sigma_max})")
        if self.brightness >= 1 or self.contrast_range >= 1:
            raise ConfigError("dk-uxnet: brightness and contrast_range must be < 1 (a factor 1 - b must stay > 0)")
        if self.query_groups and (any(not isinstance(g, int) or g < 1 for g in self.query_groups)
                                  or sum(self.query_groups) != self.num_queries):
            raise ConfigError(f"dk-uxnet: query_groups {list(self.query_groups)} must be positive integers summing to "
                              f"num_queries ({self.num_queries}); change query_groups or num_queries, or leave "
                              f"query_groups empty for the net's default split")

    @property
    def contrasts(self) -> bool:
        return (self.segc or self.qdc) and self.lambda_dc > 0

    def network_options(self) -> dict[str, Any]:
        options = {"layout": self.layout, "num_queries": self.num_queries, "query_dim": self.query_dim,
                   "layers_per_scale": self.layers_per_scale, "feature_size": self.feature_size,
                   "hidden_size": self.hidden_size, "checkpoint": self.checkpoint}
        return {**options, "query_groups": self.query_groups} if self.query_groups else options


# ---------------------------------------------------------------------------------------------- views
def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def strong_view(x: torch.Tensor, cfg: DKUXNetConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Intensity-only strong view of (B, C, *spatial) z-scored volumes, parameters drawn per sample: Gaussian noise
    (p noise_p, std ~ U[0, noise_std]), Gaussian blur (p blur_p, sigma ~ U[blur_sigma_min, blur_sigma_max]), then
    with p jitter_p brightness x U[1 - b, 1 + b] and contrast about the sample mean x U[1 - c, 1 + c]. No clamping
    and no geometry: every voxel stays where it was. Pass a CPU `generator` for reproducible draws."""
    n, shape = x.shape[0], (-1,) + (1,) * (x.dim() - 1)
    apply_noise = (torch.rand(n, generator=generator) < cfg.noise_p).view(shape).to(x.device)
    std = _uniform(n, 0.0, cfg.noise_std, generator).view(shape).to(x)
    noise = torch.randn(x.shape, generator=generator).to(x) if generator is not None else torch.randn_like(x)
    y = torch.where(apply_noise, x + std * noise, x)
    y = gaussian_blur(y, cfg.blur_p, (cfg.blur_sigma_min, cfg.blur_sigma_max), generator=generator)
    apply_jitter = (torch.rand(n, generator=generator) < cfg.jitter_p).view(shape).to(x.device)
    fb = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, generator).view(shape).to(x)
    fc = _uniform(n, 1 - cfg.contrast_range, 1 + cfg.contrast_range, generator).view(shape).to(x)
    jittered = y * fb
    mean = jittered.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    jittered = (jittered - mean) * fc + mean
    return torch.where(apply_jitter, jittered, y)


# ---------------------------------------------------------------------------------------------- losses
def pair_index(num_views: int) -> list[int]:
    """Positive of each view when views are [weak_0..weak_{B-1}, strong_0..strong_{B-1}]: i <-> i + B."""
    b = num_views // 2
    return [(i + b) % num_views for i in range(num_views)]


def dual_view_contrast(z: torch.Tensor, tau: float, contrast: str = "voxel", literal_hwd: bool = False
                       ) -> torch.Tensor:
    """Per-view InfoNCE (V,) of (V, D, *spatial) outputs of V = 2B views ordered as `pair_index`.

    voxel: at every voxel the V vectors (D channels each) form one InfoNCE set; each view's loss is its mean over
    voxels (Eq. 4's 1/(HWD)). sample: each view's flattened output is one vector (times 1/(HWD) if literal_hwd)."""
    v = z.shape[0]
    if v < 4 or v % 2:
        raise ValueError(f"dual_view_contrast needs two views of at least 2 samples (got {v} views)")
    positives = pair_index(v)
    if contrast == "voxel":
        per_voxel = info_nce(z.flatten(2).permute(2, 0, 1), positives, tau, reduction="none")   # (S, V)
        return per_voxel.mean(0)
    loss = info_nce(z.flatten(1), positives, tau, reduction="none")
    return loss / z[0, 0].numel() if literal_hwd else loss


def group_log_loss(q: torch.Tensor, target: torch.Tensor, reduction: str = "sum", floor: float = 1e-8
                   ) -> torch.Tensor:
    """The released query loss (main_train.py L194-204): -mean over views of sum_voxels sum_g y_g log Q_g, y the
    one-hot of the label clamped to <= G - 1 (G = Q's groups). reduction "mean" also divides by the voxels. A floor
    of `floor` inside the log (ours: against log 0)."""
    y = one_hot(target.clamp(max=q.shape[1] - 1), q.shape[1])
    per_voxel = -(y * q.float().clamp_min(floor).log()).sum(1)       # (N, *spatial)
    per_view = per_voxel.flatten(1).sum(1) if reduction == "sum" else per_voxel.flatten(1).mean(1)
    return per_view.mean()


def rows(indices: list[int], like: torch.Tensor) -> torch.Tensor:
    """`indices` as a long tensor on `like`'s device (integer indexing: no host sync, unlike a bool mask)."""
    return torch.tensor(indices, dtype=torch.long, device=like.device)


@METHODS.register(NET, "3D UX-Net + kMaX/MaxQuery, weak/strong views, dual InfoNCE on segmentation and query "
                       "distribution (DK-UXNet, 2024)")
class DKUXNet(Method):
    Config = DKUXNetConfig
    dims = (3,)
    networks = ("vnet",)          # builds its own net (`dk-uxnet`); the LA suites' train.network is vnet
    also_builds = (NET,)          # its patch constraint (multiple of 16) is checked too
    presets = {
        "seg-only": {"segc": False, "qdc": False, "use_unlabeled": False},   # Table 2 row 1: L_seg, labeled only
        "qdc": {"segc": False},                                              # Table 2 row 2: L_seg + L_qdc
        "segc": {"qdc": False},                                              # Table 2 row 3: L_seg + L_segc
        "full": {},                                                          # Table 2 row 4 = Table 1 "ours"
        "supervised": {"segc": False, "qdc": False, "use_unlabeled": False},  # Table 1 "ours (fully supervised)"
        "released": {"layout": "released", "seg_output": "conv", "query_supervision": "released", "segc": False,
                     "qdc": False, "use_unlabeled": False},                  # Rows21/DK-UXNet main_train.py
    }
    search_space = {"tau": "loguniform:0.05:1.0", "lambda_dc": "loguniform:0.01:1.0",
                    "num_queries": "choice:32,64,128"}

    @classmethod
    def draws_unlabeled(cls, cfg: DKUXNetConfig) -> bool:
        return cfg.use_unlabeled

    @classmethod
    def check(cls, cfg: DKUXNetConfig, train: Any, where: str) -> None:
        super().check(cfg, train, where)
        if not cfg.contrasts:
            return
        labeled = train.labeled_batch_size if cfg.use_unlabeled else train.batch_size
        unlabeled = train.batch_size - train.labeled_batch_size if cfg.use_unlabeled else 0
        if cfg.dc_negatives == "all" and labeled + unlabeled < 2:
            raise ConfigError(f"{where}: the dual-contrastive loss needs 2 samples per batch for negatives "
                              f"(batch_size {train.batch_size})")
        if cfg.dc_negatives == "same_kind" and (labeled < 2 or 0 < unlabeled < 2):
            raise ConfigError(f"{where}: dc_negatives same_kind contrasts labeled and unlabeled views apart: each "
                              f"kind needs >= 2 samples per batch (got {labeled} labeled, {unlabeled} unlabeled); "
                              f"use dc_negatives all")

    def __init__(self, cfg: DKUXNetConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.net = ctx.build_network(NET, **cfg.network_options())
        self.optimizer = ctx.make_optimizer(self.net.parameters())
        self.needs_queries = cfg.seg_output == "query" or cfg.query_supervision != "none" or (cfg.qdc and cfg.contrasts)

    # ---- pieces -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(segmentation logits, Q or None) of a batch of views; the kMaX branch runs only when needed."""
        if not self.needs_queries:
            return self.net.segment(x), None
        out = self.net(x)
        seg = out.query_logits if self.cfg.seg_output == "query" else out.logits
        return seg, (out.query_distribution if self.cfg.q_source == "groups" else out.query_logits)

    def sup_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_sup = CE + Dice (weights 1 and 1)."""
        logits = logits.float()
        dice = dice_loss_per_sample if self.cfg.dice == "per_sample" else dice_loss
        return F.cross_entropy(logits, target.long()) + dice(logits.softmax(1), target)

    def contrast(self, z: torch.Tensor, labeled_views: list[int], unlabeled_views: list[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(labeled anchors' mean, unlabeled anchors' mean) of the InfoNCE of (2B, D, *S) views (0 when none)."""
        cfg = self.cfg
        zero = z.new_zeros((), dtype=torch.float32)
        if cfg.dc_negatives == "all" or not unlabeled_views:
            per_view = dual_view_contrast(z, cfg.tau, cfg.contrast, cfg.literal_hwd)
            return (per_view[rows(labeled_views, z)].mean(),
                    per_view[rows(unlabeled_views, z)].mean() if unlabeled_views else zero)
        return tuple(dual_view_contrast(z[rows(kind, z)], cfg.tau, cfg.contrast, cfg.literal_hwd).mean()
                     for kind in (labeled_views, unlabeled_views))

    # ---- the step -----------------------------------------------------------------------------------
    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        x, y = labeled
        if cfg.use_unlabeled and cfg.contrasts:
            if unlabeled is None:
                raise ValueError("dk-uxnet needs unlabeled images in every batch (batch_size > labeled_batch_size), "
                                 "or use_unlabeled: false")
            x = torch.cat([x, unlabeled])
        n, b = y.shape[0], x.shape[0]
        views = torch.cat([x, strong_view(x, cfg)])                         # [weak_0..weak_{b-1}, strong_0..]
        labeled_views = [*range(n), *range(b, b + n)]                       # view indices (host lists: no sync)
        unlabeled_views = [*range(n, b), *range(b + n, 2 * b)]
        sup_views = labeled_views if cfg.sup_views == "both" else list(range(n))
        sup_target = torch.cat([y, y]) if cfg.sup_views == "both" else y
        if not cfg.view_chunk or cfg.view_chunk >= views.shape[0]:
            seg, q = self.forward(views)
            loss, logs = self.losses(seg, q, sup_views, sup_target, labeled_views, unlabeled_views)
            self.update(loss, self.optimizer)
            return {"loss": loss.detach(), **logs}
        chunks = views.split(cfg.view_chunk)
        with torch.no_grad(), kept_norm_statistics(self.net):     # outputs only: the statistics count once, below
            outputs = [self.forward(chunk) for chunk in chunks]
        seg = torch.cat([s for s, _ in outputs]).requires_grad_()
        q = torch.cat([o for _, o in outputs]).requires_grad_() if outputs[0][1] is not None else None
        leaves = [t for t in (seg, q) if t is not None]
        loss, logs = self.losses(seg, q, sup_views, sup_target, labeled_views, unlabeled_views)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)   # Q is unused when only L_segc contrasts
        used = [k for k, g in enumerate(grads) if g is not None]
        self.optimizer.zero_grad(set_to_none=True)
        for i, chunk in enumerate(chunks):                         # each chunk's graph, one at a time
            outs = self.forward(chunk)
            torch.autograd.backward([outs[k] for k in used], [grads[k].split(cfg.view_chunk)[i] for k in used])
        self.optimizer.step()
        return {"loss": loss.detach(), **logs}

    def losses(self, seg: torch.Tensor, q: torch.Tensor | None, sup_views: list[int], sup_target: torch.Tensor,
               labeled_views: list[int], unlabeled_views: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(L_l + L_u, log dict) of the views' segmentation outputs `seg` and query distributions `q`."""
        cfg = self.cfg
        sup = self.sup_loss(seg[rows(sup_views, seg)], sup_target)
        loss, logs = sup, {"loss_sup": sup.detach()}
        if cfg.query_supervision == "released":
            query = group_log_loss(q[rows(sup_views, q)], sup_target, cfg.query_reduction)
            loss = loss + cfg.query_weight * query
            logs["loss_query"] = query.detach()
        if cfg.contrasts:
            dc_l = dc_u = seg.new_zeros((), dtype=torch.float32)
            if cfg.segc:
                z = seg.float().softmax(1) if cfg.segc_on == "probs" else seg.float()
                segc_l, segc_u = self.contrast(z, labeled_views, unlabeled_views)
                dc_l, dc_u = dc_l + segc_l, dc_u + segc_u
                logs["loss_segc"] = (segc_l + segc_u).detach()
            if cfg.qdc:
                qdc_l, qdc_u = self.contrast(q.float(), labeled_views, unlabeled_views)
                dc_l, dc_u = dc_l + qdc_l, dc_u + qdc_u
                logs["loss_qdc"] = (qdc_l + qdc_u).detach()
            loss = loss + cfg.lambda_dc * (dc_l + dc_u)                      # L_l + L_u (Eq. 5)
            logs.update(loss_dc_l=dc_l.detach(), loss_dc_u=dc_u.detach())
        return loss, logs

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.seg_output == "conv":
            return self.net.segment(x)
        return self.net(x, return_response=False).query_logits
