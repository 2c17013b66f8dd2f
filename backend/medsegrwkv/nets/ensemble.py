"""Probability ensembles of 2D segmentation networks, as one model.

Networks of different designs fail on different slices: on the Sunnybrook GE study the MONAI UNet
draws the myocardium closer to its experts than the RWKV network, which is the stronger on ACDC
(docs/medsegrwkv.md, lever table, "ensembling"). An ensemble is registered like any architecture
and its members' weights live in one safetensors file, so loading, devices, test-time rotations,
post-processing, the CLI, the worker and Slicer need nothing new.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from medsegrwkv.nets.registry import create_model, get_spec, register_model, slice_context


class ProbabilityEnsemble(nn.Module):
    """Weighted mean of the members' softmax probabilities, returned as its logarithm: a softmax over
    the output, what every caller does with logits, gives the mean back exactly. Each member sees the
    centre slices of the input that it was built for, so a single-slice network can sit beside a
    2.5D one (the input then carries the widest member's neighbours)."""

    def __init__(self, members: Sequence[Mapping[str, Any]], in_channels: int = 1, out_channels: int = 4) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        nets, weights, channels = [], [], []
        for member in members:
            name, config = member["architecture"], dict(member.get("config", {}))
            spec = get_spec(name)
            if spec.task != "segmentation" or spec.spatial_dims != 2:
                raise ValueError(f"ensemble member {name!r} is not a 2D segmentation network")
            member_channels = 2 * slice_context(name, config) + 1
            if member_channels > in_channels:
                raise ValueError(f"ensemble member {name!r} takes {member_channels} input slices, more than the "
                                 f"ensemble's in_channels={in_channels}")
            if float(member["weight"]) <= 0:
                raise ValueError(f"ensemble member {name!r} has weight {member['weight']}; weights must be positive")
            nets.append(create_model(name, **{**config, "out_channels": out_channels}))
            weights.append(float(member["weight"]))
            channels.append(member_channels)
        self.members = nn.ModuleList(nets)
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.member_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x.shape[1] // 2
        mean = None
        for net, weight, k in zip(self.members, self.weights, self.member_channels):
            part = weight * torch.softmax(net(x[:, centre - k // 2:centre + k // 2 + 1]).float(), dim=1)
            mean = part if mean is None else mean + part
        assert mean is not None
        return torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))


# The bundled RWKV network with the bundled UNet at a third of the vote: on the validation patients
# 0.9011 against 0.8979 for the RWKV network alone (session 36; with recipes/twins/s24 in its place
# 0.8992 against 0.8949, 35 of 40 volumes up); an equal vote follows the UNet's weaker right
# ventricle (0.8946 with the session-16 UNet). The vote was read off 1:1 / 0.6 / 2:1 / 0.75 on those
# patients (docs/medsegrwkv.md, lever table).
ENSEMBLE_T_UNET2D = ({"architecture": "medsegrwkv-t", "config": {}, "weight": 2 / 3},
                     {"architecture": "unet2d", "config": {}, "weight": 1 / 3})


@register_model("medsegrwkv-t+unet2d", spatial_dims=2,
                description="medsegrwkv-t and the 2D UNet, probabilities averaged 2:1 (1.5x the time)",
                members=ENSEMBLE_T_UNET2D, in_channels=1)
def probability_ensemble(members: Sequence[Mapping[str, Any]], in_channels: int = 1,
                         out_channels: int = 4) -> nn.Module:
    return ProbabilityEnsemble(members, in_channels, out_channels)
