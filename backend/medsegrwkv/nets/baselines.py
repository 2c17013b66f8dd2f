"""Baselines from MONAI, configured rather than rewritten."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from monai.networks.nets import MedNeXt, SwinUNETR, UNet
from monai.networks.nets.mednext import create_mednext

from medsegrwkv.nets.registry import register_model

_UNET_CHANNELS = (16, 32, 64, 128, 256)
# Anisotropic 3D strides: CMR slices are 5-10 mm apart, so the first levels pool in-plane only.
_UNET3D_STRIDES = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))


def _unet(spatial_dims: int, in_channels: int, out_channels: int, channels: Sequence[int],
          strides: Sequence, num_res_units: int, dropout: float) -> nn.Module:
    strides = tuple(tuple(s) if isinstance(s, (list, tuple)) else s for s in strides)
    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                channels=tuple(channels), strides=strides, num_res_units=num_res_units, norm="instance",
                dropout=dropout)


# The click-refinement variant (medsegrwkv.interactive): inputs image, current mask, positive and
# negative click maps and a one-hot of the structure (RV, Myo, LV); output background/structure.
@register_model("unet2d-refine", task="refinement", spatial_dims=2,
                description="UNet 2D refinement: image + mask + clicks -> one structure, slice by slice",
                in_channels=7, out_channels=2, channels=_UNET_CHANNELS, strides=(2, 2, 2, 2), num_res_units=2,
                dropout=0.0)
@register_model("unet2d", spatial_dims=2, description="MONAI 2D UNet baseline (residual units), slice by slice",
                channels=_UNET_CHANNELS, strides=(2, 2, 2, 2), num_res_units=2, dropout=0.0)
def unet2d(in_channels: int = 1, out_channels: int = 4, channels=_UNET_CHANNELS, strides=(2, 2, 2, 2),
           num_res_units: int = 2, dropout: float = 0.0) -> nn.Module:
    return _unet(2, in_channels, out_channels, channels, strides, num_res_units, dropout)


@register_model("unet3d", spatial_dims=3, roi_size=(16, 160, 160),
                description="MONAI 3D UNet baseline, sliding window over 16x160x160 crops",
                channels=_UNET_CHANNELS, strides=_UNET3D_STRIDES, num_res_units=2, dropout=0.0)
def unet3d(in_channels: int = 1, out_channels: int = 4, channels=_UNET_CHANNELS, strides=_UNET3D_STRIDES,
           num_res_units: int = 2, dropout: float = 0.0) -> nn.Module:
    return _unet(3, in_channels, out_channels, channels, strides, num_res_units, dropout)


# MedNeXt (Roy et al., 2023) through MONAI's factory: S and B with 3x3(x3) kernels, no deep
# supervision. Four 2x downsamplings: 2D inputs are padded to a multiple of 16; the 3D crop
# 16x160x160 divides evenly.
def _mednext(spatial_dims: int, in_channels: int, out_channels: int, variant: str, kernel_size: int) -> nn.Module:
    return create_mednext(variant, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                          kernel_size=kernel_size)


@register_model("mednext-s", spatial_dims=3, roi_size=(16, 160, 160), variant="S", kernel_size=3,
                description="MONAI MedNeXt-S (k3), 3D, sliding window over 16x160x160 crops")
@register_model("mednext-b", spatial_dims=3, roi_size=(16, 160, 160), variant="B", kernel_size=3,
                description="MONAI MedNeXt-B (k3), 3D, sliding window over 16x160x160 crops")
def mednext_3d(in_channels: int = 1, out_channels: int = 4, variant: str = "S", kernel_size: int = 3) -> nn.Module:
    return _mednext(3, in_channels, out_channels, variant, kernel_size)


# The CPU-budget 3D variant: MedNeXt-S's expansion ratio 2 and kernel 3, at a quarter of its width
# (8 initial channels instead of 32) and one block per stage instead of two. MedNeXt-S in 3D takes
# 43 s per training step on one CPU thread; this takes about 2 s.
@register_model("mednext-xs", spatial_dims=3, roi_size=(16, 160, 160), init_filters=8, blocks=1, kernel_size=3,
                description="MedNeXt-XS: MONAI MedNeXt-S at 8 initial channels, one block per stage, 3D "
                            "(CPU budget)")
def mednext_xs(in_channels: int = 1, out_channels: int = 4, init_filters: int = 8, blocks: int = 1,
               kernel_size: int = 3) -> nn.Module:
    return MedNeXt(spatial_dims=3, init_filters=init_filters, in_channels=in_channels, out_channels=out_channels,
                   encoder_expansion_ratio=2, decoder_expansion_ratio=2, bottleneck_expansion_ratio=2,
                   kernel_size=kernel_size, blocks_down=(blocks,) * 4, blocks_bottleneck=blocks,
                   blocks_up=(blocks,) * 4)


@register_model("mednext-s-2d", pad_multiple=16, variant="S", kernel_size=3,
                description="MONAI MedNeXt-S (k3), 2D, slice by slice")
@register_model("mednext-b-2d", pad_multiple=16, variant="B", kernel_size=3,
                description="MONAI MedNeXt-B (k3), 2D, slice by slice")
def mednext_2d(in_channels: int = 1, out_channels: int = 4, variant: str = "S", kernel_size: int = 3) -> nn.Module:
    return _mednext(2, in_channels, out_channels, variant, kernel_size)


# SwinUNETR in 2D: patch 2 and four 2x mergings need inputs divisible by 32 (pad_multiple). A 3D
# variant would need 32 slices per crop, three times a CMR stack, so only 2D is registered.
# feature_size 24 (the BTCV model uses 48) keeps it within the CPU budget; it must be a multiple of 12.
@register_model("swinunetr", pad_multiple=32, feature_size=24,
                description="MONAI SwinUNETR (Swin transformer encoder, feature size 24), 2D, slice by slice")
def swinunetr(in_channels: int = 1, out_channels: int = 4, feature_size: int = 24) -> nn.Module:
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, spatial_dims=2)
