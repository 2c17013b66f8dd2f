"""The module's side of the worker protocol (docs/design.md §3; the worker's side is
backend/medsegrwkv/engine/protocol.py): building requests and reading answers.

Requests are checked here before they are sent, so a mistake in the module shows up as a
Python error in the module, not as a `bad_request` round trip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional, Sequence

DEVICES = ("auto", "cuda", "cpu")
FINAL_TYPES = ("result", "error")


class ErrorCode(str, Enum):
    """The error codes the module acts on. Those the worker sends mirror medsegrwkv.errors.ErrorCode,
    which the module cannot import (Slicer's Python may not have torch yet); Testing/test_slicer_lib.py
    checks that the two agree."""

    BUSY = "busy"
    CANCELLED = "cancelled"
    IMAGE_EXPIRED = "image_expired"
    WEIGHTS_MISSING = "weights_missing"
    NO_CUDA = "no_cuda"
    OUT_OF_MEMORY = "out_of_memory"
    MISSING_DEPENDENCY = "missing_dependency"
    INTERNAL = "internal"
    # Codes the client itself gives a request that the worker can no longer answer.
    WORKER_DIED = "worker_died"
    WORKER_RESTARTED = "worker_restarted"

    def __str__(self) -> str:
        return self.value


# What the user reads for the codes that need more than the worker's sentence.
ERROR_ADVICE = {
    ErrorCode.BUSY: "Wait for the running request to finish or cancel it.",
    ErrorCode.WEIGHTS_MISSING: "Choose a model whose weights are installed.",
    ErrorCode.NO_CUDA: "Choose Auto or CPU as the device.",
    ErrorCode.OUT_OF_MEMORY: "Use a smaller ROI or the CPU.",
    ErrorCode.MISSING_DEPENDENCY: "Use 'Install / update backend' in the About backend section.",
    ErrorCode.IMAGE_EXPIRED: "Press 'Start correcting' again.",
    ErrorCode.WORKER_DIED: "The worker is restarted on the next request.",
    ErrorCode.INTERNAL: "This is a bug; the worker log (Python console) has the details.",
}


@dataclass(frozen=True)
class Message:
    """One line from the worker."""

    type: str  # "progress" | "result" | "error"
    id: Any
    fraction: float = 0.0
    text: str = ""  # progress message or error sentence
    code: str = ""  # error code
    result: Dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.type in FINAL_TYPES


class ProtocolViolation(ValueError):
    """A line from the worker that is not a protocol message."""


def parse_message(line: str) -> Message:
    """Decode one worker line; anything malformed raises ProtocolViolation."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolViolation(f"not JSON: {line[:200]!r}") from exc
    if not isinstance(data, dict) or "type" not in data or "id" not in data:
        raise ProtocolViolation(f"not a worker message: {line[:200]!r}")
    kind = data["type"]
    if kind == "progress":
        fraction = data.get("fraction")
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
            raise ProtocolViolation(f"progress without a fraction: {line[:200]!r}")
        return Message("progress", data["id"], fraction=min(1.0, max(0.0, float(fraction))),
                       text=str(data.get("message", "")))
    if kind == "result":
        result = data.get("result")
        if not isinstance(result, dict):
            raise ProtocolViolation(f"result without an object: {line[:200]!r}")
        return Message("result", data["id"], fraction=1.0, result=result)
    if kind == "error":
        return Message("error", data["id"], text=str(data.get("message", "")), code=str(data.get("code", "")))
    raise ProtocolViolation(f"unknown message type {kind!r}")


def error_text(message: Message) -> str:
    """The sentence the module shows for an error, with advice where the code calls for it."""
    advice = ERROR_ADVICE.get(message.code)
    return f"{message.text} {advice}" if advice else message.text


def progress_text(action: str, message: Message) -> str:
    """Status line for a progress event, e.g. 'Segmenting: phase 0: slice 8/12 (67%)'."""
    detail = f": {message.text}" if message.text else ""
    return f"{action}{detail} ({round(100 * message.fraction)}%)"


# -- requests ----------------------------------------------------------------------------------
def _check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    return device


def _check_tta(tta: Optional[bool]) -> Optional[bool]:
    """True / False as asked; None leaves it to the worker (on with a CUDA GPU only)."""
    return None if tta is None else bool(tta)


def segment_request(input_path: str, output_path: str, model: Optional[str] = None, device: str = "auto",
                    tta: Optional[bool] = None, roi: Optional[Sequence[int]] = None, phase: Optional[int] = None,
                    cine_phase: Optional[int] = None) -> Dict[str, Any]:
    """Fields of a `segment` request; `roi` is a voxel box (i0, j0, k0, i1, j1, k1), stop exclusive;
    `cine_phase` is the sequence item a single-volume input was taken from, so answers name it."""
    fields: Dict[str, Any] = {"input": str(input_path), "output": str(output_path), "model": model,
                              "device": _check_device(device), "tta": _check_tta(tta), "phase": phase,
                              "cine_phase": cine_phase}
    if roi is not None:
        box: List[int] = [int(v) for v in roi]
        if len(box) != 6 or any(b <= a for a, b in zip(box[:3], box[3:])):
            raise ValueError(f"roi must be 6 integers with start < stop on every axis, got {list(roi)}")
        fields["roi"] = box
    return {"op": "segment", **fields}


def grade_request(input_path: str, model: Optional[str] = None, device: str = "auto",
                  phase: Optional[int] = None, cine_phase: Optional[int] = None,
                  labels: Optional[str] = None) -> Dict[str, Any]:
    """Fields of a `grade` request; `labels` a labelmap of the graded phase whose LV slices the study
    grade counts (else the worker's segmentation model finds them)."""
    return {"op": "grade", "input": str(input_path), "model": model, "device": _check_device(device),
            "phase": phase, "cine_phase": cine_phase, "labels": str(labels) if labels is not None else None}


def function_request(inputs: Sequence[str], output: Optional[str] = None, labels: Optional[Sequence[str]] = None,
                     model: Optional[str] = None, device: str = "auto", tta: Optional[bool] = None, ed: Optional[int] = None,
                     es: Optional[int] = None, height_cm: Optional[float] = None,
                     weight_kg: Optional[float] = None) -> Dict[str, Any]:
    """Fields of a `function` request for a whole cine: `inputs` one volume file per phase in phase
    order; either `output` (the phases' 4D labelmap the model's segmentation is written to) or
    `labels` (labelmaps to measure instead of segmenting: one per phase, or one 4D file); `ed` and
    `es` 0-based phase overrides; height and weight both or neither."""
    files = [str(path) for path in inputs]
    if len(files) < 2:
        raise ValueError(f"cardiac function needs one volume file per phase, at least two; got {len(files)}")
    if (output is None) == (labels is None):
        raise ValueError("a function request needs either an output labelmap or the labelmaps to measure, not both")
    count = len(files)
    for value, name in ((ed, "ed"), (es, "es")):
        if value is not None and not (isinstance(value, int) and 0 <= value < count):
            raise ValueError(f"{name} must be a 0-based phase index below {count}, not {value!r}")
    if (height_cm is None) != (weight_kg is None):
        raise ValueError("give both height_cm and weight_kg, or neither")
    for value, name in ((height_cm, "height_cm"), (weight_kg, "weight_kg")):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, not {value!r}")
    fields: Dict[str, Any] = {"inputs": files, "output": str(output) if output is not None else None,
                              "labels": [str(path) for path in labels] if labels is not None else None,
                              "model": model, "device": _check_device(device), "tta": _check_tta(tta), "ed": ed, "es": es,
                              "height_cm": None if height_cm is None else float(height_cm),
                              "weight_kg": None if weight_kg is None else float(weight_kg)}
    return {"op": "function", **fields}


def load_image_request(input_path: str, phase: Optional[int] = None,
                       cine_phase: Optional[int] = None) -> Dict[str, Any]:
    """Cache one volume in the worker for click refinement (the answer carries its image_id)."""
    return {"op": "load_image", "input": str(input_path), "phase": phase, "cine_phase": cine_phase}


def models_request(task: Optional[str] = None) -> Dict[str, Any]:
    return {"op": "models", "task": task}


def info_request() -> Dict[str, Any]:
    return {"op": "info"}


def cancel_request(target: Any = None) -> Dict[str, Any]:
    return {"op": "cancel", "target": target}


def encode(request_id: int, request: Dict[str, Any]) -> str:
    """One request line (with its newline)."""
    if "op" not in request:
        raise ValueError("a request needs an 'op'")
    return json.dumps({"id": request_id, **request}) + "\n"
