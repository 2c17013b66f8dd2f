"""The initialisation that the transformer-style peers (VM-UNet, UNETR++) publish: linear weights
from a truncated normal of std 0.02 and zero biases, LayerNorm as identity; convolutions keep
PyTorch's default. Applied with `model.apply(init_transformer_weights)`."""

from __future__ import annotations

import torch.nn as nn


def init_transformer_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
