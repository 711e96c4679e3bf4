"""3D UX-Net (Lee et al., ICLR 2023): a ConvNeXt-style encoder of large-kernel depthwise blocks + a UNETR-style
residual decoder. Written from the description in ../shared/PROTOCOLS-3D-DATASETS.md §B.1-B.2, read in
MASILab/3DUX-Net@14ea46b:networks/UXNet_3D/uxnet_encoder.py (`uxnet_conv`, `ux_block`) and
MASILab/3DUX-Net@14ea46b:networks/UXNet_3D/network_backbone.py (`UXNET`), whose decoder blocks are MONAI's
(monai 1.6.1 unetr_block.py `UnetrBasicBlock(res_block=True)` / `UnetrUpBlock`, dynunet_block.py `UnetResBlock` /
`UnetOutBlock`); ours are re-written here (the GPU machine has no monai) and tests/test_uxnet.py checks that they
equal MONAI's numerically on the same weights.

Structure (fs = feature_size = 48, dims = (fs, 2fs, 4fs, 8fs) = 48/96/192/384; every LayerNorm has eps 1e-6):
- encoder (`UXNetEncoder`, reference uxnet_conv L78): stem = 7^3 conv stride 2 padding 3 + channels-first
  LayerNorm (L99); then 3 downsamplings, each LayerNorm + 2^3 stride-2 conv (L106); 4 stages of `depths` (2,2,2,2)
  UX blocks; every stage output goes through its own LayerNorm (norm0-3), and the NEXT stage reads the un-normed
  stage output, as the reference forward_features. Outputs 48@1/2, 96@1/4, 192@1/8, 384@1/16.
- UX block (ux_block L35): 7^3 depthwise conv (groups = dim) -> LayerNorm over channels -> 1^3 conv dim -> 4dim
  with groups = dim (L52) -> GELU -> 1^3 conv 4dim -> dim with groups = dim (L55) -> per-channel layer scale
  gamma (init 1e-6) -> DropPath -> residual. The reference permutes to channels-last for the norm and the gamma;
  a per-channel norm/scale in channels-first layout is the same arithmetic. DropPath rates rise linearly from 0
  to `drop_path` over all blocks (reference: linspace over sum(depths)); default 0 (the reference default).
- decoder (UXNET L91, norm "instance" = InstanceNorm without affine or running stats, eps 1e-5; LeakyReLU 0.01;
  convs without bias): encoder1 = residual block in -> fs on the raw input (full resolution); encoder2-4 =
  residual blocks on stages 0-2 (fs -> 2fs, 2fs -> 4fs, 4fs -> 8fs); encoder5 = 8fs -> hidden_size 768 on
  stage 3 (L101); decoder5..2 = up blocks (2^3 stride-2 transposed conv, no bias, then a residual block on
  [up, skip]) back to fs at full resolution; decoder1 = residual block fs -> fs; out = 1^3 conv with bias (L264).
- residual block (MONAI UnetResBlock): conv3 -> IN -> LReLU -> conv3 -> IN, + skip (1^3 conv + IN when the
  channel count or stride changes, else identity), LReLU.
- init: PyTorch defaults everywhere (the reference's `self.apply(self._init_weights)` is commented out, L129,
  and MONAI's Convolution keeps the default init).

Parameters: UXNet3D(1, 2) has 53,005,922 (PROTOCOLS-3D §B.1, asserted in tests/test_uxnet.py): encoder 1,311,936;
encoder5 24,182,784; decoder5 14,598,144; encoder4 6,045,696; decoder4 3,649,536.

Patch constraint: every spatial axis a multiple of 16 (4 stride-2 steps; the decoder's skips must line up).
`forward_features` raises a ValueError naming the shape otherwise; the registry's patch check (multiple 16)
catches it earlier, before training.

`checkpoint=True`: activation checkpointing (torch.utils.checkpoint, use_reentrant=False) around every UX block
and every encoder1-5 / decoder5-1 block, only while autograd records. There is no BatchNorm (no running stats
to double-update) and the RNG state is restored on recomputation, so outputs and gradients equal the plain net's
(DropPath included; tested).

Memory (one forward+backward, batch 1, 1x1x112x112x80, fp32, CPU, measured with resource.getrusage peak RSS in
a fresh process by `python -m benchmark.nets.uxnet [--checkpoint]`; on the shared 2-core CPU machine, so the
times are inflated):
MEASURED (torch 2.14.1, 2 threads, load average ~9 on 2 cores: wall times inflated ~2.5x over CPU time):
checkpoint off: peak RSS 6.24 GiB (6.69 GB), 697 s wall / 271 s CPU; checkpoint on: peak RSS 3.79 GiB (4.07 GB),
442 s wall / 305 s CPU (the recomputation: +13% CPU). Peak RSS includes the process baseline (torch, 53 M fp32
weights + grads): 1.4-1.5 GiB at 48x48x32. GPU memory was not measured (no device in this task).
"""
from __future__ import annotations

import argparse
import resource
import time
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from benchmark.config import ConfigError

TOTAL_STRIDE = 16          # 4 stride-2 steps: stem + 3 downsamplings
LAYER_NORM_EPS = 1e-6      # every LayerNorm of uxnet_encoder.py
INSTANCE_NORM_EPS = 1e-5   # torch/MONAI InstanceNorm default
LEAKY_SLOPE = 0.01         # MONAI UnetResBlock's act ("leakyrelu", negative_slope 0.01)


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """nn.Conv2d / nn.Conv3d."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def conv_transpose_nd(spatial_dims: int) -> type[nn.Module]:
    """nn.ConvTranspose2d / nn.ConvTranspose3d."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


def maybe_checkpoint(enabled: bool, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """fn(*args), under activation checkpointing when `enabled` and autograd is recording."""
    if enabled and torch.is_grad_enabled():
        return torch_checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, *spatial) tensor (learnable weight 1 / bias 0 per channel)."""

    def __init__(self, channels: int, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.movedim(1, -1), self.weight.shape, self.weight, self.bias, self.eps)
        return out.movedim(-1, 1).contiguous()


class UXBlock(nn.Module):
    """Depthwise k^n conv -> LayerNorm -> grouped 1^n expand x4 -> GELU -> grouped 1^n project -> layer scale ->
    DropPath -> residual (reference ux_block)."""

    def __init__(self, dim: int, kernel_size: int = 7, layer_scale_init: float = 1e-6, drop_path: float = 0.0,
                 spatial_dims: int = 3) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.dwconv = conv(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = ChannelsFirstLayerNorm(dim)
        self.pwconv1 = conv(dim, 4 * dim, 1, groups=dim)
        self.pwconv2 = conv(4 * dim, dim, 1, groups=dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x)))))
        if self.gamma is not None:
            out = out * self.gamma.view(-1, *(1,) * self.spatial_dims)
        return x + self.drop_path(out)


class ResidualConvBlock(nn.Module):
    """Two k^n convs (no bias) with InstanceNorm + LeakyReLU and a residual path (1^n conv + IN when the
    channels or stride change): MONAI UnetResBlock, i.e. UnetrBasicBlock(res_block=True)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 spatial_dims: int = 3) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        pad = (kernel_size - stride + 1) // 2      # MONAI get_padding
        self.conv1 = conv(in_channels, out_channels, kernel_size, stride, pad, bias=False)
        self.conv2 = conv(out_channels, out_channels, kernel_size, 1, kernel_size // 2, bias=False)
        project = in_channels != out_channels or stride != 1
        self.conv3 = conv(in_channels, out_channels, 1, stride, bias=False) if project else None

    @staticmethod
    def _norm(x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, eps=INSTANCE_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self._norm(self.conv1(x)), LEAKY_SLOPE, inplace=True)
        out = self._norm(self.conv2(out))
        out += x if self.conv3 is None else self._norm(self.conv3(x))
        return F.leaky_relu(out, LEAKY_SLOPE, inplace=True)


class ResidualUpBlock(nn.Module):
    """Transposed conv (kernel = stride = `scale`, no bias) in -> out, concatenated with the skip (out channels),
    then a ResidualConvBlock 2*out -> out: MONAI UnetrUpBlock(res_block=True)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, scale: int = 2,
                 spatial_dims: int = 3) -> None:
        super().__init__()
        self.transp_conv = conv_transpose_nd(spatial_dims)(in_channels, out_channels, scale, scale, bias=False)
        self.conv_block = ResidualConvBlock(2 * out_channels, out_channels, kernel_size, spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))


class UXNetEncoder(nn.Module):
    """Stem + 3 downsamplings + 4 stages of UX blocks; forward(x) -> the 4 LayerNormed stage outputs."""

    def __init__(self, in_channels: int, dims: Sequence[int], depths: Sequence[int], kernel_size: int = 7,
                 layer_scale_init: float = 1e-6, drop_path: float = 0.0, checkpoint: bool = False) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv3d(in_channels, dims[0], 7, stride=2, padding=3), ChannelsFirstLayerNorm(dims[0]))]
            + [nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv3d(dims[i], dims[i + 1], 2, stride=2))
               for i in range(len(dims) - 1)])
        total = sum(depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]     # linspace(0, drop_path, total)
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.stages = nn.ModuleList(
            nn.ModuleList(UXBlock(dim, kernel_size, layer_scale_init, rates[start + j]) for j in range(depth))
            for dim, depth, start in zip(dims, depths, starts))
        self.norms = nn.ModuleList(ChannelsFirstLayerNorm(dim) for dim in dims)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for down, stage, norm in zip(self.downsample_layers, self.stages, self.norms):
            x = down(x)
            for block in stage:
                x = maybe_checkpoint(self.checkpoint, block, x)
            outs.append(norm(x))
        return tuple(outs)


class UXNetFeatures(NamedTuple):
    stages: tuple[torch.Tensor, ...]    # the 4 encoder stage outputs (after their LayerNorm): fs@1/2 .. 8fs@1/16
    decoder: tuple[torch.Tensor, ...]   # decoder5..decoder2 outputs, coarse to fine: 8fs@1/8, 4fs@1/4, 2fs@1/2, fs@1/1
    pixel: torch.Tensor                 # decoder1 output, fs@1/1 (what the out conv reads)
    logits: torch.Tensor                # (B, num_classes, D, H, W)


def _validate(in_channels: int, num_classes: int, feature_size: int, hidden_size: int, depths: Sequence[int],
              kernel_size: int, layer_scale_init: float, drop_path: float) -> None:
    checks = [
        (in_channels >= 1 and num_classes >= 1, f"in_channels/num_classes must be >= 1 (got {in_channels}/{num_classes})"),
        (feature_size >= 1, f"feature_size must be >= 1 (got {feature_size}; the paper uses 48)"),
        (hidden_size >= 1, f"hidden_size must be >= 1 (got {hidden_size}; the paper uses 768)"),
        (len(depths) == 4 and all(int(d) == d and d >= 1 for d in depths),
         f"depths must be 4 positive integers, one per stage (got {list(depths)}; the paper uses (2, 2, 2, 2))"),
        (kernel_size >= 1 and kernel_size % 2 == 1, f"kernel_size must be odd (got {kernel_size}; the paper uses 7)"),
        (layer_scale_init >= 0, f"layer_scale_init must be >= 0 (0 disables it; got {layer_scale_init})"),
        (0 <= drop_path < 1, f"drop_path must be in [0, 1) (got {drop_path})"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"uxnet-3d: {message}")


class UXNet3D(nn.Module):
    """3D UX-Net; forward(x) -> logits (B, num_classes, D, H, W), forward_features(x) -> UXNetFeatures.
    Every spatial axis of x must be a multiple of 16. See the module docstring."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, feature_size: int = 48, hidden_size: int = 768,
                 depths: Sequence[int] = (2, 2, 2, 2), kernel_size: int = 7, layer_scale_init: float = 1e-6,
                 drop_path: float = 0.0, checkpoint: bool = False) -> None:
        super().__init__()
        _validate(in_channels, num_classes, feature_size, hidden_size, depths, kernel_size, layer_scale_init,
                  drop_path)
        fs = feature_size
        self.dims = (fs, 2 * fs, 4 * fs, 8 * fs)
        self.checkpoint = checkpoint
        self.encoder = UXNetEncoder(in_channels, self.dims, tuple(depths), kernel_size, layer_scale_init, drop_path,
                                    checkpoint)
        self.encoder1 = ResidualConvBlock(in_channels, fs)
        self.encoder2 = ResidualConvBlock(fs, 2 * fs)
        self.encoder3 = ResidualConvBlock(2 * fs, 4 * fs)
        self.encoder4 = ResidualConvBlock(4 * fs, 8 * fs)
        self.encoder5 = ResidualConvBlock(8 * fs, hidden_size)
        self.decoder5 = ResidualUpBlock(hidden_size, 8 * fs)
        self.decoder4 = ResidualUpBlock(8 * fs, 4 * fs)
        self.decoder3 = ResidualUpBlock(4 * fs, 2 * fs)
        self.decoder2 = ResidualUpBlock(2 * fs, fs)
        self.decoder1 = ResidualConvBlock(fs, fs)
        self.out = nn.Conv3d(fs, num_classes, 1)

    def _run(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self.checkpoint, block, *args)

    def forward_features(self, x: torch.Tensor) -> UXNetFeatures:
        if x.dim() != 5 or any(s % TOTAL_STRIDE for s in x.shape[2:]):
            raise ValueError(f"uxnet-3d: input must be (B, C, D, H, W) with every spatial axis a multiple of "
                             f"{TOTAL_STRIDE} (got {tuple(x.shape)}); pad or crop the patch")
        stages = self.encoder(x)
        skip1 = self._run(self.encoder1, x)
        skip2 = self._run(self.encoder2, stages[0])
        skip3 = self._run(self.encoder3, stages[1])
        skip4 = self._run(self.encoder4, stages[2])
        hidden = self._run(self.encoder5, stages[3])
        dec3 = self._run(self.decoder5, hidden, skip4)
        dec2 = self._run(self.decoder4, dec3, skip3)
        dec1 = self._run(self.decoder3, dec2, skip2)
        dec0 = self._run(self.decoder2, dec1, skip1)
        pixel = self._run(self.decoder1, dec0)
        return UXNetFeatures(stages, (dec3, dec2, dec1, dec0), pixel, self.out(pixel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits


def _measure() -> None:
    """One forward+backward of UXNet3D(1, 2) at batch 1 on 1x1x112x112x80 (fp32, CPU): peak RSS and seconds."""
    parser = argparse.ArgumentParser(description=_measure.__doc__)
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument("--shape", type=int, nargs=3, default=(112, 112, 80))
    args = parser.parse_args()
    torch.manual_seed(0)
    net = UXNet3D(1, 2, checkpoint=args.checkpoint)
    x = torch.randn(1, 1, *args.shape)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    net(x).float().square().mean().backward()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"checkpoint={args.checkpoint} shape={list(args.shape)} peak_rss={after.ru_maxrss / 1024 ** 2:.2f} GiB "
          f"(ru_maxrss: KiB on Linux) forward+backward wall={seconds:.1f} s cpu={cpu:.1f} s "
          f"threads={torch.get_num_threads()}")


if __name__ == "__main__":
    _measure()
