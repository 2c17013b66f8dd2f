"""Run-time device choice: `auto` takes CUDA when present, never a hard-coded device."""

from __future__ import annotations

import torch

from medsegrwkv.errors import ErrorCode, MedSegError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def training_autocast(device: torch.device) -> torch.autocast:
    """Mixed precision for training steps: bfloat16 on CUDA (no loss scaling needed, unlike float16,
    whose small gradients underflow without a GradScaler), float16 only on GPUs without bfloat16;
    off on the CPU, where it would be slower."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def resolve_device(choice: str = "auto") -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MedSegError("CUDA was requested but no CUDA GPU is available; use --device cpu or auto.",
                              code=ErrorCode.NO_CUDA)
        return torch.device(choice)
    if choice == "cpu":
        return torch.device("cpu")
    raise MedSegError(f"Unknown device '{choice}'; choose auto, cpu or cuda.", code=ErrorCode.BAD_DEVICE)


def resolve_tta(tta: bool | None, device: torch.device) -> bool:
    """Whether to average over test-time views: as asked, else (None) only on a GPU. The four views
    cost milliseconds there; on a CPU they take four times the network time, beyond the speed
    budget of a study (docs/benchmark.md), so they stay an option."""
    return device.type == "cuda" if tta is None else bool(tta)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
