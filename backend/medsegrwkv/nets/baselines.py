"""Baselines from MONAI, configured rather than rewritten."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from monai.networks.nets import UNet

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
