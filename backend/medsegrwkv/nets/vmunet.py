"""VM-UNet (Ruan & Xiang, 2024; JCruan519/VM-UNet): a U-shaped network of Visual State Space
blocks, the Mamba peer of docs/design.md §5.2, written here from the paper's description.

Patch embedding (4x4, C channels, LayerNorm) -> encoder stages at 1/4 .. 1/32 of C, 2C, 4C, 8C
channels, each a run of VSS blocks followed by patch merging (2x2 neighbours concatenated, norm,
linear to twice the channels) -> decoder stages that add the encoder's feature of the same size,
expand 2x (linear + pixel shuffle + norm) and run VSS blocks -> a final 4x expansion to C/4
channels and a 1x1 convolution to the class logits. A VSS block is x + DropPath(SS2D(LN(x))).
SS2D: a linear layer to two branches; one goes through a 3x3 depthwise conv + SiLU and is scanned
in four orders (rows, columns, and both reversed), each order with its own input-dependent
Δ, B, C (selective scan, `selective_scan.py`); the four results are summed, normalised and gated by
SiLU of the other branch. With C=96, encoder depths (2,2,2,2) and decoder depths (2,2,2,1) this is
the published configuration (27.4M parameters; see `ORIGINAL_PARAMS`).

The original repeats a 1-channel image to 3 channels before the embedding; here the embedding
takes `in_channels` directly (the same function class, 3,072 fewer weights for one channel).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import DropPath
from torch import Tensor

from medsegrwkv.nets.registry import register_model
from medsegrwkv.nets.selective_scan import selective_scan
from medsegrwkv.nets.weight_init import init_transformer_weights

ORIGINAL_PARAMS = 27_427_561
"""Parameters of the published configuration (ISIC: 3 input channels, 1 class), counted by
instantiating the original `VSSM(depths=[2,2,2,2], depths_decoder=[2,2,2,1])`."""

DIRECTIONS = 4


class SS2D(nn.Module):
    """2D selective scan over four directions (rows, columns, and their reverses)."""

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, d_conv: int = 3,
                 dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        super().__init__()
        inner = expand * dim
        self.rank = math.ceil(dim / 16)
        self.d_state = d_state
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv2d(inner, inner, d_conv, padding=d_conv // 2, groups=inner)
        # Per direction: x -> (Δ rank, B, C) and Δ rank -> channels.
        bound = inner ** -0.5
        self.x_proj = nn.Parameter(torch.empty(DIRECTIONS, self.rank + 2 * d_state, inner).uniform_(-bound, bound))
        self.dt_proj = nn.Parameter(torch.empty(DIRECTIONS, inner, self.rank).uniform_(-self.rank ** -0.5,
                                                                                        self.rank ** -0.5))
        # Δ bias: softplus^{-1} of a log-uniform step in [dt_min, dt_max], as Mamba initialises it.
        dt = torch.exp(torch.rand(DIRECTIONS, inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # A = -exp(A_log) = -(1..d_state) for every channel (S4D-real), D = 1.
        self.A_log = nn.Parameter(torch.log(torch.arange(1.0, d_state + 1)).repeat(DIRECTIONS * inner, 1))
        self.D = nn.Parameter(torch.ones(DIRECTIONS * inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv(x.permute(0, 3, 1, 2)))  # (B, inner, H, W)
        inner, length = x.shape[1], h * w
        rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
        xs = torch.stack((rows, cols, rows.flip(-1), cols.flip(-1)), dim=1)  # (B, 4, inner, L)
        dt, B, C = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj).split([self.rank, self.d_state, self.d_state], 2)
        dt = torch.einsum("bkrl,kdr->bkdl", dt, self.dt_proj)
        y = selective_scan(xs.reshape(b, -1, length), dt.reshape(b, -1, length), -torch.exp(self.A_log.float()),
                           B, C, self.D, delta_bias=self.dt_bias.flatten(), delta_softplus=True)
        y = y.view(b, DIRECTIONS, inner, length)
        along_cols = y[:, 1] + y[:, 3].flip(-1)
        y = y[:, 0] + y[:, 2].flip(-1) + along_cols.view(b, inner, w, h).transpose(2, 3).reshape(b, inner, length)
        y = self.out_norm(y.transpose(1, 2).reshape(b, h, w, inner).to(z.dtype))
        return self.out_proj(y * F.silu(z))


class VSSBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float, d_state: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = SS2D(dim, d_state)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.mixer(self.norm(x)))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated -> LayerNorm -> linear to 2x the channels (half resolution)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat((x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]), dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Linear to `scale` x the channels, then pixel shuffle by `scale`: dim / scale channels at
    `scale` x the resolution, then LayerNorm."""

    def __init__(self, dim: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim // scale)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        s = self.scale
        x = self.expand(x).view(b, h, w, s, s, c // s).permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, c // s)
        return self.norm(x)


class VMUNet(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 4, dim: int = 96,
                 depths: Sequence[int] = (2, 2, 2, 2), depths_decoder: Sequence[int] = (2, 2, 2, 1),
                 d_state: int = 16, drop_path_rate: float = 0.2, patch_size: int = 4) -> None:
        super().__init__()
        levels = len(depths)
        dims = [dim * 2 ** i for i in range(levels)]
        self.embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.embed_norm = nn.LayerNorm(dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        rates_decoder = torch.linspace(0, drop_path_rate, sum(depths_decoder)).tolist()[::-1]

        def stage(width: int, depth: int, rate: list[float]) -> nn.Sequential:
            return nn.Sequential(*(VSSBlock(width, rate[i], d_state) for i in range(depth)))

        self.encoder = nn.ModuleList(stage(dims[i], depths[i], rates[sum(depths[:i]):]) for i in range(levels))
        self.merges = nn.ModuleList(PatchMerging(dims[i]) for i in range(levels - 1))
        self.decoder = nn.ModuleList(stage(dims[-1 - i], depths_decoder[i], rates_decoder[sum(depths_decoder[:i]):])
                                     for i in range(levels))
        self.expands = nn.ModuleList(PatchExpand(dims[-i], 2) for i in range(1, levels))
        self.final_expand = PatchExpand(dim, patch_size)
        self.head = nn.Conv2d(dim // patch_size, out_channels, 1)
        self.apply(init_transformer_weights)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed_norm(self.embed(x).permute(0, 2, 3, 1))  # channels last from here on
        skips = []
        for i, blocks in enumerate(self.encoder):
            x = blocks(x)
            if i < len(self.merges):
                x = self.merges[i](x)
                skips.append(x)
        x = self.decoder[0](x)
        for expand, blocks in zip(self.expands, self.decoder[1:]):
            x = blocks(expand(x + skips.pop()))
        return self.head(self.final_expand(x).permute(0, 3, 1, 2))


@register_model("vmunet", pad_multiple=32,
                description="VM-UNet (Mamba VSS blocks, 4-direction selective scan), slice by slice",
                dim=96, depths=(2, 2, 2, 2), depths_decoder=(2, 2, 2, 1), d_state=16, drop_path_rate=0.2)
# The CPU-budget variant: C=48, one VSS block per stage and 4 SSM states instead of 16 (the
# pure-PyTorch scan's cost grows with the state count), about the size of MedSegRWKV-T.
@register_model("vmunet-s", pad_multiple=32,
                description="VM-UNet-S: VM-UNet at C=48, one VSS block per stage, 4 SSM states (CPU budget)",
                dim=48, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4, drop_path_rate=0.1)
def vmunet(**config) -> VMUNet:
    return VMUNet(**config)
