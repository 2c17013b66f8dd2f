"""Run-time device choice: `auto` takes CUDA when present, never a hard-coded device."""

from __future__ import annotations

import torch

from medsegrwkv.errors import MedSegError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str = "auto") -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MedSegError("CUDA was requested but no CUDA GPU is available; use --device cpu or auto.",
                              code="no_cuda")
        return torch.device(choice)
    if choice == "cpu":
        return torch.device("cpu")
    raise MedSegError(f"Unknown device '{choice}'; choose auto, cpu or cuda.", code="bad_device")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
