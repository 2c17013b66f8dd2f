"""One exception type for everything the user can get wrong, and the one list of error codes.

The CLI and the engine turn a `MedSegError` into one sentence and exit code 2 (or an `error`
message with the same `code`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """The machine-readable codes of the worker's `error` answers (docs/design.md §3).

    A `str` so that JSON carries the plain code and `code == "bad_roi"` holds. The Slicer module
    mirrors the codes it acts on in MedSegRWKVLib/protocol.py (Testing/test_slicer_lib.py checks).
    """

    # Input the user gave.
    BAD_INPUT = "bad_input"  # an image that cannot be read or is not a short-axis stack
    BAD_ARGUMENT = "bad_argument"
    BAD_PHASE = "bad_phase"
    BAD_ROI = "bad_roi"
    BAD_CLICK = "bad_click"
    BAD_MASK = "bad_mask"
    BAD_LABELS = "bad_labels"
    BAD_DATA = "bad_data"  # training or evaluation data
    BAD_OVERRIDE = "bad_override"  # a --set config entry
    BAD_OUTPUT = "bad_output"
    OUTPUT_NOT_WRITABLE = "output_not_writable"
    UNKNOWN_SEGMENT = "unknown_segment"
    IMAGE_EXPIRED = "image_expired"
    # Models and their weights.
    UNKNOWN_MODEL = "unknown_model"
    WRONG_TASK = "wrong_task"
    WEIGHTS_MISSING = "weights_missing"
    BAD_WEIGHTS = "bad_weights"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    # The machine.
    BAD_DEVICE = "bad_device"
    NO_CUDA = "no_cuda"
    OUT_OF_MEMORY = "out_of_memory"
    MISSING_DEPENDENCY = "missing_dependency"
    # The worker protocol.
    BAD_REQUEST = "bad_request"  # not JSON, not an object, no id/op, or a field of the wrong type
    UNKNOWN_OP = "unknown_op"
    BUSY = "busy"  # another request is running; this one was not started (no queue)
    CANCELLED = "cancelled"
    INTERNAL = "internal"  # a bug: the traceback is in the worker's stderr

    def __str__(self) -> str:
        return self.value


class MedSegError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    def __str__(self) -> str:
        return self.message
