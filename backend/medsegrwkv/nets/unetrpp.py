"""UNETR++ (Shaker et al., 2024; Amshaker/unetr_plus_plus), the 3D attention peer of docs/design.md
§5.2, written here from the paper's description in its ACDC configuration.

Encoder: a (1,4,4) patch stem and three 2x2x2 downsamplings (each conv + GroupNorm) to 32, 64,
128, 256 channels, each level followed by three EPA blocks. An EPA block adds a learned position
embedding, applies efficient paired attention (pre-LN, residual scaled by a layer-scale gamma)
and then two residual 3x3x3 conv blocks and a 1x1x1 conv, residually. Efficient paired attention
shares one query and key projection between a channel attention (a d x d map per head over
all N tokens) and a spatial attention whose keys and values are projected by learned linear maps
from N tokens to p (so it costs O(N p), not O(N^2)); the two halves are fused by concatenating two
half-width projections. Decoder: transposed convs back up the levels, adding the encoder's
feature and running three EPA blocks per level; the last level (x4 in-plane) uses a residual conv
block on the full-resolution conv features of the input. The token projections make the network
fixed to its crop (`img_size`): it runs by sliding window over 16x160x160 crops.

One deliberate difference: the original code reshapes the spatial-attention output (batch, heads,
tokens, channels) with a permutation that mixes tokens and channels; here heads are merged back
onto the channel axis as in standard multi-head attention. The parameter count is unchanged.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, get_conv_layer
from torch import Tensor

from medsegrwkv.nets.registry import register_model
from medsegrwkv.nets.weight_init import init_transformer_weights

ORIGINAL_PARAMS_ACDC = 66_796_012
"""Parameters of the published ACDC configuration (1 input channel, 4 classes, without the two
deep-supervision heads, which add 392), counted by instantiating the original
`UNETR_PP(in_channels=1, out_channels=4, feature_size=16, num_heads=4, depths=[3,3,3,3],
dims=[32,64,128,256])` from unetr_pp/network_architecture/acdc. (The Synapse configuration, whose
E and F projections are shared, has 42.95M, the figure the paper reports.)"""

ACDC_CROP = (16, 160, 160)


class EPA(nn.Module):
    """Efficient paired attention over (B, N, C) tokens."""

    def __init__(self, tokens: int, dim: int, proj: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.temperature_channel = nn.Parameter(torch.ones(heads, 1, 1))
        self.temperature_spatial = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkvv = nn.Linear(dim, 4 * dim, bias=False)  # shared query, shared key, channel value, spatial value
        self.project_keys = nn.Linear(tokens, proj)  # E: N tokens -> p
        self.project_values = nn.Linear(tokens, proj)  # F
        self.drop_channel = nn.Dropout(dropout)
        self.drop_spatial = nn.Dropout(dropout)
        self.out_spatial = nn.Linear(dim, dim // 2)
        self.out_channel = nn.Linear(dim, dim // 2)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v_channel, v_spatial = self.qkvv(x).view(b, n, 4, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)
        k_projected, v_projected = self.project_keys(k), self.project_values(v_spatial)  # (B, h, d, p)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # (B, h, d, N)
        channel = self.drop_channel((q @ k.transpose(-2, -1) * self.temperature_channel).softmax(-1))  # (B, h, d, d)
        x_channel = (channel @ v_channel).permute(0, 3, 1, 2).reshape(b, n, c)
        spatial = self.drop_spatial((q.transpose(-2, -1) @ k_projected * self.temperature_spatial).softmax(-1))
        x_spatial = (spatial @ v_projected.transpose(-2, -1)).transpose(1, 2).reshape(b, n, c)  # (B, N, c)
        return torch.cat((self.out_spatial(x_spatial), self.out_channel(x_channel)), dim=-1)


class EPABlock(nn.Module):
    """Position embedding + EPA (pre-LN, layer-scaled residual) + residual convolutions."""

    def __init__(self, tokens: int, dim: int, proj: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))
        self.attention = EPA(tokens, dim, proj, heads, dropout)
        self.conv1 = UnetResBlock(3, dim, dim, kernel_size=3, stride=1, norm_name="batch")
        self.conv2 = UnetResBlock(3, dim, dim, kernel_size=3, stride=1, norm_name="batch")
        self.conv3 = nn.Sequential(nn.Dropout3d(0.1), nn.Conv3d(dim, dim, 1))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        t = x.flatten(2).transpose(1, 2) + self.pos_embed
        t = t + self.gamma * self.attention(self.norm(t))
        skip = t.transpose(1, 2).reshape(shape)
        return skip + self.conv3(self.conv2(self.conv1(skip)))


def _epa_stage(tokens: int, dim: int, proj: int, heads: int, depth: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(*(EPABlock(tokens, dim, proj, heads, dropout) for _ in range(depth)))


class UpBlock(nn.Module):
    """Transposed conv up, add the skip, then EPA blocks (or one residual conv block)."""

    def __init__(self, in_dim: int, out_dim: int, scale: Sequence[int] | int, blocks: nn.Module) -> None:
        super().__init__()
        self.up = get_conv_layer(3, in_dim, out_dim, kernel_size=scale, stride=scale, conv_only=True,
                                 is_transposed=True)
        self.blocks = blocks

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.blocks(self.up(x) + skip)


class UNETRPlusPlus(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 4, img_size: Sequence[int] = ACDC_CROP,
                 dims: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (3, 3, 3, 3), heads: int = 4,
                 proj_sizes: Sequence[int] = (64, 64, 64, 32), stem: Sequence[int] = (1, 4, 4),
                 feature_size: int = 16, dropout: float = 0.1, decoder_depth: int = 3) -> None:
        super().__init__()
        sizes = [tuple(s // k for s, k in zip(img_size, stem))]
        for _ in dims[1:]:
            sizes.append(tuple(s // 2 for s in sizes[-1]))
        if any(s < 1 for s in sizes[-1]) or any(s % k for s, k in zip(img_size, stem)):
            raise ValueError(f"UNETR++ crop {tuple(img_size)} does not fit the stem {tuple(stem)} and "
                             f"{len(dims) - 1} halvings")
        tokens = [math.prod(s) for s in sizes]
        self.img_size = tuple(img_size)
        self.downsample = nn.ModuleList([nn.Sequential(
            get_conv_layer(3, in_channels, dims[0], kernel_size=stem, stride=stem, conv_only=True),
            nn.GroupNorm(in_channels, dims[0]))])
        self.downsample.extend(nn.Sequential(
            get_conv_layer(3, dims[i], dims[i + 1], kernel_size=2, stride=2, conv_only=True),
            nn.GroupNorm(dims[i], dims[i + 1])) for i in range(len(dims) - 1))
        self.stages = nn.ModuleList(_epa_stage(tokens[i], dims[i], proj_sizes[i], heads, depths[i], dropout)
                                    for i in range(len(dims)))
        self.input_block = UnetResBlock(3, in_channels, feature_size, kernel_size=3, stride=1, norm_name="instance")
        self.decoder = nn.ModuleList(
            UpBlock(dims[i + 1], dims[i], 2, _epa_stage(tokens[i], dims[i], 64, heads, decoder_depth, dropout))
            for i in reversed(range(len(dims) - 1)))
        self.decoder.append(UpBlock(dims[0], feature_size, stem, UnetResBlock(
            3, feature_size, feature_size, kernel_size=3, stride=1, norm_name="instance")))
        self.head = UnetOutBlock(3, feature_size, out_channels)
        self.apply(init_transformer_weights)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"UNETR++ takes crops of exactly {self.img_size}; got {tuple(x.shape[2:])}")
        skips = [self.input_block(x)]
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
            skips.append(x)
        skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)


@register_model("unetrpp", spatial_dims=3, roi_size=ACDC_CROP,
                description="UNETR++ (efficient paired attention), ACDC configuration, sliding window over "
                            "16x160x160 crops",
                img_size=ACDC_CROP, dims=(32, 64, 128, 256), depths=(3, 3, 3, 3), heads=4,
                proj_sizes=(64, 64, 64, 32), stem=(1, 4, 4), feature_size=16, dropout=0.1)
# The CPU-budget variant: half the widths, one EPA block per level in the encoder and the decoder,
# projections to 32 tokens (16 at the bottleneck) and feature size 8. The token projections E and F
# (16*40*40 tokens -> p) keep it at about 10M parameters; one training step takes about 2 s on one
# CPU thread against 32 s for the ACDC configuration.
@register_model("unetrpp-s", spatial_dims=3, roi_size=ACDC_CROP,
                description="UNETR++-S: UNETR++ at half width, one EPA block per level, sliding window over "
                            "16x160x160 crops (CPU budget)",
                img_size=ACDC_CROP, dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), decoder_depth=1, heads=4,
                proj_sizes=(32, 32, 32, 16), stem=(1, 4, 4), feature_size=8, dropout=0.1)
def unetrpp(**config) -> UNETRPlusPlus:
    return UNETRPlusPlus(**config)
