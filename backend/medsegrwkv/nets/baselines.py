"""Baselines from MONAI, configured rather than rewritten."""

from __future__ import annotations

import torch.nn as nn
from monai.networks.nets import UNet

from medsegrwkv.nets.registry import register_model


@register_model(
    "unet2d",
    spatial_dims=2,
    description="MONAI 2D UNet baseline (residual units), slice by slice",
    channels=(16, 32, 64, 128, 256),
    strides=(2, 2, 2, 2),
    num_res_units=2,
    dropout=0.0,
)
def unet2d(in_channels: int = 1, out_channels: int = 4, channels=(16, 32, 64, 128, 256),
           strides=(2, 2, 2, 2), num_res_units: int = 2, dropout: float = 0.0) -> nn.Module:
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
                norm="instance", dropout=dropout)
