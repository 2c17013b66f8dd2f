"""Motion-artefact graders: timm backbones with one input channel and five outputs (scores 1-5).

All are trained from scratch (`pretrained=False`: nothing is downloaded). Input: one slice,
(B, 1, 224, 224), prepared by `medsegrwkv.grading.dataset.slice_to_input`; output: logits over the
Likert scores 1..5 in that order (logit index i is score i + 1).

The five backbones of the seed study, plus a lightweight default for the CPU:
regnetx_002 (2.3M parameters, 0.2 GMACs per slice; a 10-slice study in about 0.1 s on one core).
`backbone_size` (config) runs a backbone on a coarser grid of the same field of view (`Downsampled`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.nets.registry import register_model

INPUT_SIZE = 224  # every grader sees 224x224 (Swin's window layout needs it)
NUM_SCORES = 5


class Downsampled(nn.Module):
    """A backbone run at a coarser grid: the whole input (the same 350 mm field of view) is area-averaged to
    `size` x `size` first. Lets the seed study's large backbones be trained on a CPU (issue 21) at a quarter
    of the cost, without changing the input rule the graders share."""

    def __init__(self, backbone: nn.Module, size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(F.interpolate(x, size=(self.size, self.size), mode="area"))


def _timm_model(arch: str, in_channels: int, num_classes: int, input_size: int, drop_rate: float,
                backbone_size: int | None) -> nn.Module:
    try:
        import timm
    except ImportError as exc:  # timm is the optional "grading" dependency of the backend
        raise MedSegError("Motion grading needs the timm package; install it with "
                          "`pip install medsegrwkv`.", code=ErrorCode.MISSING_DEPENDENCY) from exc
    kwargs = {"pretrained": False, "in_chans": in_channels, "num_classes": num_classes, "drop_rate": drop_rate}
    size = backbone_size or input_size
    if arch.startswith(("swin", "coat")):  # their patch embedding and windows are built for one grid
        kwargs["img_size"] = size
    backbone = timm.create_model(arch, **kwargs)
    return backbone if size == input_size else Downsampled(backbone, size)


def _register(name: str, arch: str, description: str) -> None:
    def builder(arch: str = arch, in_channels: int = 1, num_classes: int = NUM_SCORES,
                input_size: int = INPUT_SIZE, drop_rate: float = 0.0, backbone_size: int | None = None) -> nn.Module:
        return _timm_model(arch, in_channels, num_classes, input_size, drop_rate, backbone_size)

    builder.__name__ = name
    register_model(name, task="grading", spatial_dims=2, description=description, arch=arch, in_channels=1,
                   num_classes=NUM_SCORES, input_size=INPUT_SIZE, drop_rate=0.0, backbone_size=None)(builder)


_register("grader_regnetx_002", "regnetx_002", "motion grader, timm RegNetX-200MF (lightweight CPU default)")
_register("grader_resnet101d", "resnet101d", "motion grader, timm ResNet-101-D (seed study)")
_register("grader_swin_base", "swin_base_patch4_window7_224", "motion grader, timm Swin-B 224 (seed study)")
_register("grader_coat_lite_small", "coat_lite_small", "motion grader, timm CoaT-Lite Small (seed study)")
_register("grader_twins_pcpvt_base", "twins_pcpvt_base", "motion grader, timm Twins-PCPVT-B (seed study)")
_register("grader_twins_svt_base", "twins_svt_base", "motion grader, timm Twins-SVT-B (seed study)")
