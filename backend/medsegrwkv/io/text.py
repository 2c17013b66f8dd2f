"""Atomic text output: a reader never sees half a report, and a failed write leaves the old file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from medsegrwkv.errors import MedSegError


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False, newline="") as f:
            f.write(text)
        os.replace(f.name, path)
    except OSError as exc:
        raise MedSegError(f"Cannot write {path}: {(exc.strerror or str(exc)).lower()}.",
                          code="output_not_writable") from exc
