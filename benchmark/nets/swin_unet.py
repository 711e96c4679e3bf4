"""Swin-UNet (Cao et al., ECCV-W 2022) built from timm's Swin blocks, in the "lite" configuration that SSL4MIS's
cross teaching (CTCT) and AdvMIM use (PROTOCOLS.md §3.1, §3.2; reference: HiLab-git/SSL4MIS
`code/networks/swin_transformer_unet_skip_expand_decoder_sys.py` with `configs/swin_tiny_patch4_window7_224_lite.yaml`).
Written from that description; the Swin blocks, patch embedding and patch merging are timm's.

Shape of the net (224 input, C = 96):
- grayscale input repeated to 3 channels; 4x4 patch embedding + LayerNorm -> 56x56xC tokens;
- NO absolute position embedding (the reference's `APE: False`): positions are known to the net only through
  the windows' relative position bias;
- encoder: 4 timm `SwinTransformerStage`s, depths [2,2,2,2], heads [3,6,12,24], window 7, MLP ratio 4,
  drop-path 0.2 (linear over the 8 encoder blocks); stages 1-3 start with a patch merging (timm layout, so
  the module names equal timm's `swin_tiny_patch4_window7_224` ones); final LayerNorm on the bottleneck;
- skips: the input of every stage's blocks (after the patch embedding / after each merging), as the reference;
- decoder: patch expanding (Linear C->2C, pixel shuffle x2, LayerNorm C/2) from the bottleneck, then three
  stages of [concat skip -> Linear 2C->C -> 2 Swin blocks -> patch expanding (not after the last)], LayerNorm,
  final x4 patch expanding (Linear C->16C, pixel shuffle x4, LayerNorm) and a 1x1 conv (no bias) to classes.
  Decoder drop-path mirrors the encoder's rates per stage, as the reference.
- init: truncated normal (std .02) for Linear weights, zero bias; LayerNorm 1/0 (reference `_init_weights`).
27,168,420 parameters for 4 classes (the reference lite Swin-UNet's 27.17 M); mask tokens add 56*56*96 = 301,056.

Masked image modeling (AdvMIM Eq. 3): `forward(x, mask)` with a boolean block mask (B, gh, gw) whose grid
divides the token grid replaces the masked token positions by learnable mask tokens right after the patch
embedding (and its norm), the skips of the masked pass included. The token tensor holds one vector per
position (1 x Ht x Wt x C, trunc-normal std .02), as the released AdvMIM code (1x3136x96): since the net has no
absolute position embedding, this is the paper's "shared mask token with positional embedding" written as one
sum (token + learned position embedding). It exists only with `mask_tokens=True`, so the plain net's
parameter count equals the reference's.

ImageNet weights (`pretrained`: imagenet | none | FILE, resolved by `benchmark.weights`; nothing is ever
downloaded here): `load_pretrained` reads a Swin-T checkpoint (timm key names, or Microsoft's original ones,
wrapped in `model`, with `layers.i.downsample` at a stage's END, renamed to timm's start-of-next-stage layout)
and does what the reference `load_from` does (SSL4MIS @06df604 code/networks/vision_transformer.py L54-86, the
same in AdvMIM @1652af8): every checkpoint tensor whose name and shape match the net loads (the encoder:
patch embedding, the stages' blocks and mergings, the bottleneck norm); besides, each `layers.i.*` tensor is
also offered to the decoder stage `layers_up.(3 - i)` of the reference, the decoder stage of the same width
(ours: `layers_up.(2 - i)`, since our first patch expanding is `first_expand`, not `layers_up.0`): the blocks of
encoder stages 0-2 load into decoder stages 96/192/384 wide (stage 3 maps onto the reference's first
expanding, which has no blocks, so nothing); tensors whose shape differs are dropped, keys the net lacks
(`head.*`, Swin-T stage 2's blocks 2-5: the lite net has 2) are ignored. What keeps its initialisation: the
decoder's patch expandings, concat linears, `norm_up`, the final x4 expanding, the output conv and the mask
tokens. With timm's swin_tiny_patch4_window7_224 (173 tensors): 197 net tensors load (119 encoder + 78
decoder; 25,082,820 of the 27,168,420 parameters), 54 checkpoint tensors are unused (head.fc 2, stage-2 blocks
2-5 52), 21 net tensors keep their init; `net.pretrained_report` keeps the lists.
`pretrained=none` (default) is a from-scratch net; `net.pretrained` is the file loaded, or None.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.swin_transformer import SwinTransformerBlock, SwinTransformerStage

from benchmark.checkpoints import safe_load
from benchmark.masks import upsample_block_mask
from benchmark.weights import resolve

LITE = dict(patch_size=4, embed_dim=96, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=7,
            mlp_ratio=4.0, drop_path_rate=0.2)


class PatchExpand(nn.Module):
    """(B, H, W, C) -> (B, sH, sW, C * ... ): Linear C -> s^2 * C_out, pixel shuffle by s, LayerNorm(C_out)."""

    def __init__(self, dim: int, out_dim: int, scale: int) -> None:
        super().__init__()
        self.scale, self.out_dim = scale, out_dim
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        s, c = self.scale, self.out_dim
        x = self.expand(x).view(b, h, w, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, c)
        return self.norm(x)


class DecoderStage(nn.Module):
    """Swin blocks at one resolution (shift every second block), optionally followed by a x2 patch expanding."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, drop_path: list[float], upsample: bool) -> None:
        super().__init__()
        shift = window_size // 2
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(dim, resolution, num_heads=num_heads, window_size=window_size,
                                 shift_size=0 if i % 2 == 0 else shift, mlp_ratio=mlp_ratio, drop_path=drop_path[i])
            for i in range(depth)])
        self.upsample = PatchExpand(dim, dim // 2, 2) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.blocks(x))


class SwinUNet(nn.Module):
    """`SwinUNet(in_channels=1, num_classes=4, img_size=224)(x, mask=None) -> logits (B, num_classes, H, W)`."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4, img_size: int = 224,
                 pretrained: str | None = None, mask_tokens: bool = False, patch_size: int = LITE["patch_size"],
                 embed_dim: int = LITE["embed_dim"], depths: tuple[int, ...] = LITE["depths"],
                 num_heads: tuple[int, ...] = LITE["num_heads"], window_size: int = LITE["window_size"],
                 mlp_ratio: float = LITE["mlp_ratio"], drop_path_rate: float = LITE["drop_path_rate"]) -> None:
        super().__init__()
        n = len(depths)
        if img_size % (patch_size * 2 ** (n - 1)):
            raise ValueError(f"Swin-UNet img_size {img_size} must be a multiple of {patch_size * 2 ** (n - 1)} "
                             f"(patch {patch_size}, {n - 1} mergings)")
        weights = resolve(pretrained, "swin-unet.pretrained")   # MissingWeights before anything is built
        self.in_channels, self.img_size = in_channels, img_size
        self.pretrained = None if weights is None else str(weights)
        self.pretrained_report: dict[str, list[str]] = {}
        grid = img_size // patch_size
        self.grid = grid
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim, norm_layer=nn.LayerNorm, output_fmt="NHWC")
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        rates = [dpr[sum(depths[:i]):sum(depths[:i + 1])] for i in range(n)]
        dims = [embed_dim * 2 ** i for i in range(n)]
        self.layers = nn.Sequential(*[
            SwinTransformerStage(dims[max(i - 1, 0)], dims[i], (grid // 2 ** max(i - 1, 0),) * 2, depths[i],
                                 downsample=i > 0, num_heads=num_heads[i], window_size=window_size,
                                 mlp_ratio=mlp_ratio, drop_path=rates[i])
            for i in range(n)])
        self.norm = nn.LayerNorm(dims[-1])
        # decoder: first expand from the bottleneck, then stages at widths dims[n-2] .. dims[0]
        self.first_expand = PatchExpand(dims[-1], dims[-2], 2)
        self.concat_back = nn.ModuleList(nn.Linear(2 * dims[i], dims[i]) for i in reversed(range(n - 1)))
        self.layers_up = nn.ModuleList(
            DecoderStage(dims[i], (grid // 2 ** i,) * 2, depths[i], num_heads[i], window_size, mlp_ratio, rates[i],
                         upsample=i > 0)
            for i in reversed(range(n - 1)))
        self.norm_up = nn.LayerNorm(embed_dim)
        self.final_expand = PatchExpand(embed_dim, embed_dim, patch_size)
        self.output = nn.Conv2d(embed_dim, num_classes, 1, bias=False)
        self.apply(_init_weights)
        self.mask_token = None
        if mask_tokens:
            self.mask_token = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
            trunc_normal_(self.mask_token, std=0.02)
        if weights is not None:
            self.pretrained_report = load_pretrained(self, weights)

    def apply_mask(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Replace the token positions covered by the block mask (B, gh, gw) with the mask tokens."""
        if self.mask_token is None:
            raise ValueError("this Swin-UNet was built without mask tokens (mask_tokens=True)")
        m = upsample_block_mask(mask, tokens.shape[1:3]).to(tokens.dtype).unsqueeze(-1)
        return tokens * (1 - m) + self.mask_token.to(tokens.dtype) * m

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = self.patch_embed(x)
        if mask is not None:
            x = self.apply_mask(x, mask)
        skips = []
        for stage in self.layers:
            x = stage.downsample(x)
            skips.append(x)
            x = stage.blocks(x)
        x = self.first_expand(self.norm(x))
        for concat, stage, skip in zip(self.concat_back, self.layers_up, reversed(skips[:-1])):
            x = stage(concat(torch.cat([x, skip], -1)))
        x = self.final_expand(self.norm_up(x))
        return self.output(x.permute(0, 3, 1, 2))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _timm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unwrap `model`/`state_dict`, drop non-persistent buffers, rename original (Microsoft) keys to timm's:
    there a stage's patch merging sits at its end (`layers.i.downsample`), in timm at the next stage's start."""
    state = state.get("model", state)
    state = state.get("state_dict", state)
    original = "layers.0.downsample.reduction.weight" in state
    out = {}
    for k, v in state.items():
        if "relative_position_index" in k or "attn_mask" in k:
            continue
        if original:
            k = re.sub(r"layers\.(\d+)\.downsample", lambda g: f"layers.{int(g.group(1)) + 1}.downsample", k)
        out[k] = v
    return out


def load_pretrained(net: SwinUNet, path: str | Path) -> dict[str, list[str]]:
    """Load a local ImageNet Swin checkpoint into the encoder, mirror its stage blocks into the decoder (the
    reference `load_from`, see the module docstring).

    Returns {"loaded": net keys set from the file, "unused": checkpoint keys that set nothing, "kept_init": net
    keys left at their initialisation}. Raises ValueError for a file that is no Swin checkpoint."""
    path = Path(path).expanduser()
    source = _timm_keys(safe_load(path))
    own = net.state_dict()
    n_up = len(net.layers_up)
    update: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for k, v in source.items():
        targets = [k]
        stage = re.match(r"layers\.(\d+)\.(.*)", k)
        if stage and int(stage.group(1)) < n_up:  # reference layers_up.(3 - i) = ours layers_up.(2 - i)
            targets.append(f"layers_up.{n_up - 1 - int(stage.group(1))}.{stage.group(2)}")
        for target in targets:
            if target in own and own[target].shape == v.shape:
                update[target] = v
                used.add(k)
    if not any(k.startswith("patch_embed.") for k in update):
        raise ValueError(f"{path} does not look like a Swin checkpoint: no patch_embed weights matched")
    net.load_state_dict(update, strict=False)
    return {"loaded": sorted(update), "unused": sorted(set(source) - used),
            "kept_init": sorted(set(own) - set(update))}
