"""What the panel's choosers offer and what its labels say, from the worker's `models` and `info`
results. Models without verified weights are listed but cannot be chosen (docs/design.md §6: never
silently random)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

VERIFIED = "verified"


@dataclass(frozen=True)
class Choice:
    value: str  # what goes into the request
    text: str  # what the combo box shows
    enabled: bool
    tooltip: str = ""


def model_description(row: Dict[str, Any]) -> str:
    """One line for the model's description label: what it is, size, accuracy, weights, speed."""
    parts = [f"{row['description']}.", f"{row['params'] / 1e6:.2f} M parameters."]
    dice = row.get("validation_mean_dice")
    if dice is not None:
        parts.append(f"Validation mean Dice {dice:.3f} (ACDC).")
    parts.append(f"Weights: {row['weights']}.")
    speeds = row.get("measured_seconds_per_slice") or {}
    if speeds:
        parts.append("Measured here: " + ", ".join(f"{s:.3f} s per slice on {d}" for d, s in sorted(speeds.items()))
                     + ".")
    return " ".join(parts)


def model_choices(models: Sequence[Dict[str, Any]]) -> List[Choice]:
    """Default model first, then the others with weights, then those without."""
    ordered = sorted(models, key=lambda r: (not r["default"], r["weights"] != VERIFIED, r["name"]))
    choices = []
    for row in ordered:
        usable = row["weights"] == VERIFIED
        text = row["name"] + (" (default)" if row["default"] else "") + ("" if usable else f" — {row['weights']}")
        choices.append(Choice(row["name"], text, usable, model_description(row)))
    return choices


def pick_choice(choices: Sequence[Choice], previous: Optional[str]) -> Optional[int]:
    """Index to select: the previous choice while it is still usable, else the first usable one."""
    for i, choice in enumerate(choices):
        if choice.value == previous and choice.enabled:
            return i
    return next((i for i, choice in enumerate(choices) if choice.enabled), None)


def device_choices(info: Optional[Dict[str, Any]]) -> List[Choice]:
    """Auto / GPU / CPU, naming the detected GPU; GPU is disabled when the worker sees none."""
    gpus: List[str] = list(info.get("gpus", [])) if info else []
    gpu = gpus[0] if gpus else None
    auto = f"Auto (GPU: {gpu})" if gpu else ("Auto (CPU: no CUDA GPU found)" if info else "Auto")
    return [
        Choice("auto", auto, True, "The CUDA GPU when there is one, else the CPU."),
        Choice("cuda", f"GPU: {gpu}" if gpu else "GPU (none found)", gpu is not None,
               "Run on the CUDA GPU." if gpu else "The worker's PyTorch sees no CUDA GPU."),
        Choice("cpu", "CPU", True, "Run on the CPU (slower, always available)."),
    ]


def tta_default(info: Optional[Dict[str, Any]]) -> bool:
    """The TTA box's first state: ticked where the worker has a CUDA GPU, where the four views cost
    milliseconds (the backend's own default, `inference.device.resolve_tta`); on a CPU they take
    four times as long, so the box starts clear."""
    return bool(info and info.get("cuda_available"))


def with_warnings(status: str, result: Dict[str, Any]) -> str:
    """A status line followed by the worker's warnings (input or result outside what the models saw)."""
    warnings = result.get("warnings") or []
    return " ".join([status, *("Warning: " + w for w in warnings)])


def phase_text(index: int, count: int, value: str = "", unit: str = "") -> str:
    """What follows the (1-based) phase spin box: 'of 2 (287.1 ms)' for sequence item `index`."""
    if count <= 1:
        return "Single volume (no cine phases)"
    label = f"of {count}"
    if not value:
        return label
    return f"{label} ({value} {unit})" if unit else f"{label} ({value})"


def about_text(info: Optional[Dict[str, Any]], torch_version: Optional[str], backend_version: Optional[str],
               problem: str = "") -> str:
    """The About backend area: versions, devices, where the worker runs, and what is missing."""
    lines = [f"PyTorch in Slicer's Python: {torch_version or 'not installed'}",
             f"medsegrwkv backend package: {backend_version or 'not installed'}"]
    if info:
        versions = info.get("versions", {})
        gpus = info.get("gpus") or []
        lines += [
            f"Worker: Python {info['python']}, pid {info['pid']}, protocol {info['protocol']}",
            f"Worker PyTorch {info['torch']} (CUDA {info.get('torch_cuda') or 'none'}); "
            + (f"GPU: {', '.join(gpus)}" if gpus else "no CUDA GPU: runs on the CPU"),
            "Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
            "Default models: " + ", ".join(f"{task}: {name}" for task, name in info.get("default_models", {}).items()),
        ]
        if info.get("loaded_models"):
            lines.append("Loaded now: " + ", ".join(info["loaded_models"]))
    if problem:
        lines.append(problem)
    return "\n".join(lines)
