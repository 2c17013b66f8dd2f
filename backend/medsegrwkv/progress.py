"""The progress and cancel callbacks every long job takes, defined once.

A job reports `progress(fraction, message)` with fraction in [0, 1] and polls `cancel()` between
units of work (batches, windows, phases); a True answer ends the job with `Cancelled`, which the
CLI and the worker report like any other user-facing error.
"""

from __future__ import annotations

from typing import Callable

from medsegrwkv.errors import ErrorCode, MedSegError

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class Cancelled(MedSegError):
    def __init__(self) -> None:
        super().__init__("The request was cancelled.", code=ErrorCode.CANCELLED)


def no_progress(fraction: float, message: str) -> None:
    return None


def never_cancelled() -> bool:
    return False


def check_cancel(cancel: CancelFn) -> None:
    """Raise `Cancelled` when the caller asked to stop."""
    if cancel():
        raise Cancelled()


def scaled(progress: ProgressFn, start: float, stop: float, prefix: str = "") -> ProgressFn:
    """A callback for one part of a job that reports into [start, stop] of the whole."""
    def report(fraction: float, message: str) -> None:
        progress(start + (stop - start) * fraction, f"{prefix}{message}")
    return report
