"""Atomic text output: a reader never sees half a report, and a failed write leaves the old file."""

from __future__ import annotations

from pathlib import Path

from medsegrwkv.io.atomic import write_bytes_atomic


def write_text_atomic(path: str | Path, text: str) -> None:
    """UTF-8 text to `path`, verified before the rename (medsegrwkv.io.atomic)."""
    write_bytes_atomic(path, text.encode("utf-8"))
