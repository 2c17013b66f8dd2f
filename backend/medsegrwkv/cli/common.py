"""Output checks, warnings and progress bars shared by the command-line commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from medsegrwkv.errors import ErrorCode, MedSegError


DATA_ENV = "MEDSEGRWKV_DATA"  # the folder holding acdc/ and sunnybrook/


def data_root() -> Path:
    """The shared data folder: $MEDSEGRWKV_DATA, else ../shared/data (the layout of this project's machines)."""
    return Path(os.environ.get(DATA_ENV) or "../shared/data").expanduser()


def acdc_option_help() -> str:
    return f"ACDC-layout folder (default ${DATA_ENV}/acdc, else ../shared/data/acdc)"


def add_series_argument(parser: Any) -> None:
    """`--series`, as `segment`, `grade` and `function` take it (medsegrwkv.io.dicom._choose_series)."""
    parser.add_argument("--series", help="DICOM SeriesInstanceUID or SeriesNumber when the folder holds several "
                        "series; several, comma-separated, for a short-axis stack stored a slice per series")


def given_options(args: Any, *names: str) -> dict[str, Any]:
    """The options the user gave, by config field name: the rest keep the config's own defaults,
    which are defined once, in the config dataclass."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def show_config(config: Any) -> int:
    """`train --show-config`: the settings a run would use, as JSON."""
    import dataclasses
    import json

    print(json.dumps(dataclasses.asdict(config), indent=2, default=str))
    return 0


def check_output(path: Path, suffixes: Sequence[str]) -> None:
    """Fail before any work when the output cannot be written."""
    if not any(path.name.endswith(s) for s in suffixes):
        raise MedSegError(f"The output {path} must end in one of: {', '.join(suffixes)}.", code=ErrorCode.BAD_OUTPUT)
    from medsegrwkv.io.atomic import check_writable

    check_writable(path)


def check_report_outputs(output: str, csv: str | None, png: str | None) -> tuple[Path, Path | None, Path | None]:
    """A command's JSON report and its optional CSV and PNG, each checked before any work."""
    paths = (Path(output), Path(csv) if csv else None, Path(png) if png else None)
    for path, suffix in zip(paths, (".json", ".csv", ".png")):
        if path is not None:
            check_output(path, (suffix,))
    return paths


def write_outputs(outputs: Sequence[tuple[Path | None, Callable[[Path], None]]]) -> list[Path]:
    """Write each requested output (None: not asked for) with its writer; the paths written."""
    written = []
    for path, write in outputs:
        if path is not None:
            write(path)
            written.append(path)
    return written


def print_warnings(warnings: Sequence[str]) -> None:
    """Results outside what the models saw (medsegrwkv.inference.plausibility), on stderr."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def bar_progress(bar: Any) -> Callable[[float, str], None]:
    """A progress callback (medsegrwkv.progress) that moves a `progress_bar`."""
    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction, 1)
        bar.set_postfix_str(message)
        bar.refresh()

    return progress


def progress_bar(total: float, desc: str):  # -> tqdm
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
                file=sys.stderr, disable=None)
