"""Output checks, warnings and progress bars shared by the command-line commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from medsegrwkv.errors import ErrorCode, MedSegError


def check_output(path: Path, suffixes: Sequence[str]) -> None:
    """Fail before any work when the output cannot be written."""
    if not any(path.name.endswith(s) for s in suffixes):
        raise MedSegError(f"The output {path} must end in one of: {', '.join(suffixes)}.", code=ErrorCode.BAD_OUTPUT)
    from medsegrwkv.io.atomic import check_writable

    check_writable(path)


def print_warnings(warnings: Sequence[str]) -> None:
    """Results outside what the models saw (medsegrwkv.inference.plausibility), on stderr."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def progress_bar(total: float, desc: str):  # -> tqdm
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
                file=sys.stderr, disable=None)
