"""One exception type for everything the user can get wrong.

The CLI and the engine turn a `MedSegError` into one sentence and exit code 2 (or an `error`
message with the same `code`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MedSegError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""

    def __init__(self, message: str, code: str = "bad_input") -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message
