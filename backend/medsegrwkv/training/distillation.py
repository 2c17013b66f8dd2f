"""Distillation: a teacher network's soft predictions as a second training target.

Why: the default's test-time augmented predictions (`--tta`) score 0.3-0.9 points above its single pass, and
a wider network or an ensemble scores differently again (docs/medsegrwkv.md, 'Levers measured'); a
student pulled towards such a teacher may keep part of the gain at one pass's cost. The teacher is
any segmentation weights with the student's input (same spatial dims, same neighbouring slices).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.nets.registry import get_spec, slice_context


class Teacher:
    """Frozen segmentation weights that give class probabilities for the student's training batches."""

    def __init__(self, name_or_dir: str, device: torch.device, student_model: str,
                 student_config: dict, tta: bool = False) -> None:
        segmenter = Segmenter.from_pretrained(name_or_dir, device)
        student = get_spec(student_model)
        if segmenter.spec.spatial_dims != student.spatial_dims:
            raise MedSegError(f"The teacher {name_or_dir} is a {segmenter.spec.spatial_dims}D network and the student "
                              f"{student_model} {student.spatial_dims}D; distillation needs the same input.",
                              code=ErrorCode.BAD_WEIGHTS)
        if segmenter.context != slice_context(student_model, student_config):
            raise MedSegError(f"The teacher {name_or_dir} sees {segmenter.context} neighbouring slices a side and the "
                              f"student {slice_context(student_model, student_config)}; distillation needs the same "
                              "input.", code=ErrorCode.BAD_WEIGHTS)
        for parameter in segmenter.model.parameters():
            parameter.requires_grad_(False)
        self.segmenter, self.tta, self.source = segmenter, tta, name_or_dir

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, classes, ...) softmax probabilities, averaged over the in-plane rotations with `tta`."""
        return self.segmenter.batch_probabilities(images, self.tta)

    def describe(self) -> dict:
        """What the manifest records of the teacher."""
        manifest = self.segmenter.manifest
        return {"weights": self.source, "architecture": manifest["architecture"], "sha256": manifest.get("sha256"),
                "tta": self.tta, "mean_dice": manifest.get("metrics", {}).get("validation", {}).get("mean_dice")}


def distillation_loss(student_logits: torch.Tensor, teacher_probabilities: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per pixel, averaged: zero exactly where the student's softmax equals the
    teacher's; only the student gets gradients."""
    log_student = F.log_softmax(student_logits.float(), dim=1)
    target = teacher_probabilities.detach().float()
    return F.kl_div(log_student, target, reduction="none").sum(dim=1).mean()
