"""Atomic text output: a reader never sees half a report, and a failed write leaves the old file."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from medsegrwkv.io.atomic import write_bytes_atomic


def write_text_atomic(path: str | Path, text: str) -> None:
    """UTF-8 text to `path`, verified before the rename (medsegrwkv.io.atomic)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def rows_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text of same-keyed rows, header from the first (the csv module's default line ends)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
