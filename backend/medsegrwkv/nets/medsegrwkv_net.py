"""MedSegRWKV: a U-shaped network of Vision-RWKV blocks with a dynamic scan (docs/design.md §5.1).

Encoder: a convolutional stem (full, 1/2 resolution; its features are the fine skips), then
four stages at 1/4 .. 1/32. Each stage has one global block, which scans the whole map along a
snake whose axis order and direction change from stage to stage (on the large early maps it
mixes on a 2x average-pooled grid), followed by local blocks over windows whose count falls
with depth (8, 4, 2, 1 per axis). Each window is scanned along K candidate snakes, weighted by
a gate on the window's mean feature. Decoder: per level, upsample, concatenate the skip, 1x1
conv, 7x7 depthwise conv + norm + GELU, and on the two coarsest levels an RWKV block; a 1x1
head gives the class logits at full resolution.

Ablation switches: `scan` = "raster" | "snake" | "dynamic", `local_blocks` = True | False.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from medsegrwkv.nets.onednn import linear
from medsegrwkv.nets.registry import register_model
from medsegrwkv.nets.rwkv_blocks import PathGate, RWKVBlock
from medsegrwkv.nets.scan import ScanPath, candidate_paths, from_windows, raster_path, to_windows

SCANS = ("raster", "snake", "dynamic")


def global_path(scan: str, spatial_dims: int, stage: int) -> ScanPath:
    """The path of a stage's global (and decoder) blocks: with a dynamic scan it cycles
    through the candidates, so each stage scans in another order and direction."""
    if scan == "raster":
        return raster_path(spatial_dims)
    candidates = candidate_paths(spatial_dims)
    return candidates[stage % len(candidates)] if scan == "dynamic" else candidates[0]


def local_paths(scan: str, spatial_dims: int) -> tuple[ScanPath, ...]:
    if scan == "dynamic":
        return candidate_paths(spatial_dims)
    return (global_path(scan, spatial_dims, 0),)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a channels-first map: independent of batch size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)

    def of_centred_(self, x: Tensor) -> Tensor:
        """Inference: the same norm, in place, of a fresh map whose channel mean is already zero
        (made by `centred` weights): x / rms(x) * weight + bias, from one norm reduction and two
        in-place passes. On the CPU about twice as fast as LayerNorm over 16-32 channels, whose
        per-pixel statistics cost more than the pixels' arithmetic, and no new map
        (docs/benchmark.md)."""
        norm, h = self.norm, x.movedim(1, -1)
        scale = torch.linalg.vector_norm(h, dim=-1, keepdim=True).square_().div_(h.shape[-1]).add_(norm.eps).rsqrt_()
        return torch.addcmul(norm.bias, h.mul_(scale), norm.weight, out=h).movedim(-1, 1)

    def inference_(self, x: Tensor) -> Tensor:
        """Inference: the norm in place on a fresh map, its channel mean subtracted first."""
        h = x.movedim(1, -1)
        h.sub_(h.mean(dim=-1, keepdim=True))
        return self.of_centred_(x)


def gelu_(x: Tensor) -> Tensor:
    """Inference: GELU in place. A fresh full-resolution map costs the CPU more than the GELU
    itself (the allocator maps its pages anew)."""
    return torch.ops.aten.gelu_(x)


def centred(weight: Tensor) -> Tensor:
    """A linear map's weight (out, ...) or bias (out,) less its mean over the outputs: the map's
    output then has zero mean over its channels, the mean that a LayerNorm after it would subtract."""
    return weight - weight.mean(dim=0, keepdim=True)


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A 1x1 conv (weight (out, in)) as a matmul over the channels of each voxel: on a
    channels-last map a plain GEMM (oneDNN's on the CPU), where the CPU's 1x1 convolution takes a
    slower path."""
    return linear(x.movedim(1, -1), weight, bias).movedim(-1, 1)


def class_logits(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The 1x1 class head (weight (classes, in)) on a map (B, in, *S), written channels-first:
    weight @ each sample's (in, voxels). The softmax over the classes and the copy into the
    study's array read a channels-first map about 6x faster than a channels-last one (4.9 against
    0.7 ms for 5 slices of 256^2), and this head costs no more than the channels-last one."""
    B, C, *size = x.shape
    rows = x.movedim(1, -1).reshape(B, -1, C)
    return torch.matmul(weight, rows.transpose(1, 2)).add_(bias[:, None]).view(B, -1, *size)


def conv_by_matmul(conv: nn.Conv2d, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`conv` (stride 1, groups 1, zero padding) with `weight` and `bias` as im2col and one matmul,
    returned channels-last. For the stem's first conv on the 1-channel image this is about 3x
    faster on the CPU than oneDNN's direct convolution, whose output also comes channels-first."""
    B, _, H, W = x.shape
    columns = F.unfold(x, conv.kernel_size, padding=conv.padding)  # (B, Cin k k, H W)
    out = linear(columns.transpose(1, 2), weight.flatten(1))  # (B, H W, Cout)
    if bias is not None:
        out += bias
    return out.view(B, H, W, -1).permute(0, 3, 1, 2)


def conv_and_norm(conv: nn.Conv2d, norm: ChannelNorm, x: Tensor) -> Tensor:
    """Inference: a 2D conv (groups 1) and the ChannelNorm after it, the norm's mean subtraction
    folded into the conv's weights and bias (`centred`). A few input channels at stride 1 (the
    stem's first conv) go through `conv_by_matmul`."""
    weight, bias = centred(conv.weight), None if conv.bias is None else centred(conv.bias)
    if conv.in_channels <= 4 and conv.stride == (1, 1):
        return norm.of_centred_(conv_by_matmul(conv, x, weight, bias))
    return norm.of_centred_(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups))


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


class ConvUnit(nn.Sequential):
    """3x3 conv (optionally strided) + norm + GELU."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, stride: Sequence[int]) -> None:
        super().__init__(_conv(spatial_dims)(cin, cout, 3, stride=tuple(stride), padding=1, bias=False),
                         ChannelNorm(cout), nn.GELU())


class EncoderStage(nn.Module):
    """One global block, then local blocks over `windows` windows per axis (channels-last)."""

    def __init__(self, dim: int, spatial_dims: int, stage: int, windows: int, local_depth: int,
                 pool: int, scan: str, local_blocks: bool, hidden_rate: int, layer_scale: float) -> None:
        super().__init__()
        path = (global_path(scan, spatial_dims, stage),)
        self.global_block = RWKVBlock(dim, path, hidden_rate, layer_scale, pool)
        self.windows = (windows,) * spatial_dims if local_blocks else None
        paths = local_paths(scan, spatial_dims) if local_blocks else path
        self.gate = PathGate(dim, len(paths)) if len(paths) > 1 else None
        # Without local blocks the stage keeps the same depth with global blocks (same params).
        self.local = nn.ModuleList(RWKVBlock(dim, paths, hidden_rate, layer_scale, 1 if local_blocks else pool)
                                   for _ in range(local_depth))

    def forward(self, x: Tensor) -> Tensor:
        x = self.global_block(x)
        if self.windows is None:
            for block in self.local:
                x = block(x)
            return x
        windows = to_windows(x, self.windows)
        weights = self.gate(windows) if self.gate is not None else None
        for block in self.local:
            windows = block(windows, weights)
        return from_windows(windows, self.windows)


class DecoderLevel(nn.Module):
    """Upsample to the skip's size, concatenate, 1x1 conv, then a large-kernel depthwise
    residual unit and optionally an RWKV block."""

    def __init__(self, spatial_dims: int, deep: int, skip: int, out: int, block: RWKVBlock | None) -> None:
        super().__init__()
        conv = _conv(spatial_dims)
        # 7x7 in-plane; CMR volumes are thick-sliced, so only 3 across slices in 3D.
        kernel = (7, 7) if spatial_dims == 2 else (3, 7, 7)
        self.fuse = nn.Sequential(conv(deep + skip, out, 1, bias=False), ChannelNorm(out), nn.GELU())
        self.local = nn.Sequential(conv(out, out, kernel, padding=tuple(k // 2 for k in kernel), groups=out),
                                   ChannelNorm(out), nn.GELU())
        self.block = block
        self.reference = False

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if torch.is_grad_enabled() or self.reference:
            mode = "bilinear" if x.dim() == 4 else "trilinear"
            x = F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False)
            x = self.fuse(torch.cat((x, skip), dim=1))
            x = x + self.local(x)
        else:  # norms and GELUs in place: the upsampled projection and the conv's output are the only new maps
            x = self._fuse_inference(x, skip)
            x = gelu_(self.local[1].inference_(self.local[0](x))).add_(x)
        if self.block is not None:
            x = self.block(x.movedim(1, -1)).movedim(-1, 1)
        return x

    def _fuse_inference(self, x: Tensor, skip: Tensor) -> Tensor:
        """`fuse` without the concatenation. The 1x1 conv (no bias) commutes with the
        interpolation (per channel, weights summing to 1): the deep map is projected at its own
        size and the fewer channels upsampled; the skip's projection is added onto them; the norm's
        mean subtraction is folded into the projection (`centred`)."""
        mode = "bilinear" if x.dim() == 4 else "trilinear"
        weight, split = centred(self.fuse[0].weight.flatten(1)), x.shape[1]
        x = F.interpolate(pointwise(x, weight[:, :split]), size=skip.shape[2:], mode=mode, align_corners=False)
        x = x.movedim(1, -1)  # channels last
        rows = x.reshape(-1, x.shape[-1])
        rows.add_(linear(skip.movedim(1, -1).reshape(-1, skip.shape[1]), weight[:, split:]))
        return gelu_(self.fuse[1].of_centred_(rows.view(x.shape).movedim(-1, 1)))


class MedSegRWKV(nn.Module):
    """(B, C, H, W) or (B, C, D, H, W) -> logits (B, out_channels, same size).

    Config: `dims` per stage; `stem_dims` at full and 1/2 resolution; `local_depths` local
    blocks per stage; `windows` per axis per stage (3D: the slice axis too); `global_pool` the
    pooling of each stage's global spatial mix; `decoder_blocks` an RWKV block on the decoder
    level of each stage but the deepest; `scan` and `local_blocks` the ablation switches;
    `deep_supervision`: in training mode also class logits from the decoder's 1/2, 1/4 and 1/8
    resolution maps (their own 1x1 heads), for MONAI's `DeepSupervisionLoss`. 3D
    stems keep the slice axis (stride 1, 2, 2); merges halve every axis.

    Inputs of any size are zero-padded to `pad_multiple` per axis (32 in-plane; 8 across slices
    in 3D) and the logits cropped back. Cost of "medsegrwkv-t" on a 1x1x256x256 slice, counted
    by torch.utils.flop_counter.FlopCounterMode (convs and matmuls only, 2 FLOPs per
    multiply-add; GFLOPs = total / 1e9): 2.52. It does not count the Bi-WKV (2.1M token-channels
    x ~24 operations = 0.05e9), nor the Q-Shift, norms and activations (~0.1e9).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 4, spatial_dims: int = 2,
                 dims: Sequence[int] = (32, 64, 128, 256), stem_dims: Sequence[int] = (16, 24),
                 local_depths: Sequence[int] = (1, 1, 1, 1), windows: Sequence[int] = (8, 4, 2, 1),
                 global_pool: Sequence[int] = (2, 2, 1, 1), decoder_blocks: Sequence[bool] = (False, True, True),
                 hidden_rate: int = 4, layer_scale: float = 0.1, scan: str = "dynamic",
                 local_blocks: bool = True, deep_supervision: bool = False) -> None:
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, not {scan!r}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
        if not len(dims) == len(local_depths) == len(windows) == len(global_pool) == len(decoder_blocks) + 1:
            raise ValueError("dims, local_depths, windows, global_pool need one entry per stage "
                             "and decoder_blocks one per stage below the deepest")
        # Thick-sliced CMR volumes: the stem keeps the slice axis, the stages halve every axis.
        down = (2,) * spatial_dims if spatial_dims == 2 else (1, 2, 2)
        self.stem = nn.ModuleList([ConvUnit(spatial_dims, in_channels, stem_dims[0], (1,) * spatial_dims),
                                   ConvUnit(spatial_dims, stem_dims[0], stem_dims[1], down)])
        conv = _conv(spatial_dims)
        self.embed = nn.Sequential(conv(stem_dims[1], dims[0], 3, stride=down, padding=1), ChannelNorm(dims[0]))
        self.merges = nn.ModuleList(nn.Sequential(nn.LayerNorm(cin), _ChannelsFirst(conv(cin, cout, 2, stride=2)))
                                    for cin, cout in zip(dims[:-1], dims[1:]))
        self.stages = nn.ModuleList(
            EncoderStage(dim, spatial_dims, s, windows[s], local_depths[s], global_pool[s], scan, local_blocks,
                         hidden_rate, layer_scale) for s, dim in enumerate(dims))
        self.decoder = nn.ModuleList(
            DecoderLevel(spatial_dims, dims[s + 1], dims[s], dims[s],
                         RWKVBlock(dims[s], (global_path(scan, spatial_dims, s),), hidden_rate, layer_scale)
                         if decoder_blocks[s] else None)
            for s in reversed(range(len(dims) - 1)))
        self.stem_decoder = nn.ModuleList([DecoderLevel(spatial_dims, dims[0], stem_dims[1], stem_dims[1], None),
                                           DecoderLevel(spatial_dims, stem_dims[1], stem_dims[0], stem_dims[0], None)])
        self.head = conv(stem_dims[0], out_channels, 1)
        # Training only; no parameters (the state dict unchanged) without deep supervision.
        self.aux_heads = nn.ModuleList(conv(c, out_channels, 1) for c in (stem_dims[1], dims[0], dims[1])
                                       if deep_supervision)
        # Every stage's grid must split into its windows: stride of the stage times its count.
        strides = [[d ** 2 * 2 ** s for d in down] for s in range(len(dims))]
        self.reference = False
        self.piece_voxels = 2 ** 16
        self.pad_multiple = tuple(math.lcm(*(st[a] * n for st, n in zip(strides, windows)), strides[-1][a])
                                  for a in range(spatial_dims))

    def use_reference(self, on: bool = True) -> "MedSegRWKV":
        """The plain route (whole batches, all K paths mixed by the gates, cumulative-sum Bi-WKV)
        instead of the fast inference route (`rwkv_blocks`), for tests and measurements. They
        compute the same function but for the fast route's hardened gates, which scan each window
        along its strongest path alone."""
        for module in self.modules():
            if hasattr(module, "reference"):
                module.reference = on
        return self

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """The logits; with deep supervision in training mode, the list of `_deeply_supervised`."""
        size = x.shape[2:]
        pad = [(-s) % m for s, m in zip(size, self.pad_multiple)]
        x = F.pad(x, [p for amount in reversed(pad) for p in (0, amount)])
        if not self.reference and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        skip0, skip1, x = self._pieces(self._stem, x)
        x = x.movedim(1, -1)
        features = []
        for s, stage in enumerate(self.stages):
            if s:
                x = self.merges[s - 1](x)
            x = stage(x)
            features.append(x.movedim(-1, 1))
        decoded = [features[-1]]
        for level, skip in zip(self.decoder, reversed(features[:-1])):
            decoded.append(level(decoded[-1], skip))
        if self.aux_heads and self.training:
            return self._deeply_supervised(decoded, skip1, skip0, size)
        (logits,) = self._pieces(self._head, decoded[-1], skip1, skip0)
        return logits[(..., *(slice(0, s) for s in size))]

    def _stem(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The full- and half-resolution skips and the first stage's input."""
        if self.reference or torch.is_grad_enabled() or x.dim() != 4:
            skip0 = self.stem[0](x)
            skip1 = self.stem[1](skip0)
            return skip0, skip1, self.embed(skip1)
        skip0 = gelu_(conv_and_norm(self.stem[0][0], self.stem[0][1], x))
        skip1 = gelu_(conv_and_norm(self.stem[1][0], self.stem[1][1], skip0))
        return skip0, skip1, conv_and_norm(self.embed[0], self.embed[1], skip1)

    def _head(self, x: Tensor, skip1: Tensor, skip0: Tensor) -> tuple[Tensor]:
        """The two decoder levels back to full resolution and the class logits."""
        x = self.stem_decoder[1](self.stem_decoder[0](x, skip1), skip0)
        if self.reference or torch.is_grad_enabled():
            return (self.head(x),)
        return (class_logits(x, self.head.weight.flatten(1), self.head.bias),)

    def _deeply_supervised(self, decoded: list[Tensor], skip1: Tensor, skip0: Tensor, size: Sequence[int]
                           ) -> list[Tensor]:
        """Logits at full resolution, then from the 1/2, 1/4 and 1/8 resolution decoder maps, each
        cropped to the part that covers the unpadded input."""
        half = self.stem_decoder[0](decoded[-1], skip1)
        full = self.stem_decoder[1](half, skip0)
        padded = full.shape[2:]
        outputs = []
        for head, x in zip((self.head, *self.aux_heads), (full, half, decoded[-1], decoded[-2])):
            extent = (-(-s * n // p) for s, n, p in zip(size, x.shape[2:], padded))
            outputs.append(head(x)[(..., *(slice(0, e) for e in extent))])
        return outputs

    def _pieces(self, fn, x: Tensor, *more: Tensor) -> tuple[Tensor, ...]:
        """`fn` on the batch, or in inference on pieces of at most `piece_voxels` input voxels at
        full resolution, each written into the whole outputs: the full-resolution maps of one
        piece stay in the CPU caches and only the outputs exist for the whole batch (same function)."""
        per_piece = max(1, self.piece_voxels // math.prod((more[-1] if more else x).shape[2:]))
        if self.reference or torch.is_grad_enabled() or per_piece >= x.shape[0]:
            return fn(x, *more)
        outputs: list[Tensor] = []
        for start in range(0, x.shape[0], per_piece):
            piece = slice(start, start + per_piece)
            results = fn(x[piece], *(t[piece] for t in more))
            if not outputs:
                outputs = [torch.empty((x.shape[0], *r.shape[1:]), dtype=r.dtype, device=r.device,
                                       memory_format=_memory_format(r)) for r in results]
            for out, r in zip(outputs, results):
                out[piece] = r
        return tuple(outputs)


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class _ChannelsFirst(nn.Module):
    """Runs a channels-first module on a channels-last tensor."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.movedim(-1, 1)).movedim(1, -1)


_DESCRIPTION = "MedSegRWKV-{} (2D): Bi-WKV U-Net with dynamic snake scan, slice by slice"
_VARIANTS = {
    "t": dict(dims=(32, 64, 128, 256), stem_dims=(16, 24), local_depths=(2, 2, 2, 1)),
    "s": dict(dims=(48, 96, 192, 384), stem_dims=(16, 32), local_depths=(2, 2, 2, 2)),
    "b": dict(dims=(64, 128, 256, 512), stem_dims=(24, 32), local_depths=(2, 2, 3, 2)),
}


@register_model("medsegrwkv-t", description=_DESCRIPTION.format("T"), **_VARIANTS["t"])
@register_model("medsegrwkv-s", description=_DESCRIPTION.format("S"), **_VARIANTS["s"])
@register_model("medsegrwkv-b", description=_DESCRIPTION.format("B"), **_VARIANTS["b"])
def medsegrwkv(**config) -> MedSegRWKV:
    return MedSegRWKV(**config)


@register_model("medsegrwkv-t-3d", spatial_dims=3, roi_size=(16, 160, 160),
                description="MedSegRWKV-T (3D): Bi-WKV U-Net with dynamic snake scan, sliding window",
                **_VARIANTS["t"])
def medsegrwkv_3d(**config) -> MedSegRWKV:
    return MedSegRWKV(**{"spatial_dims": 3, **config})
