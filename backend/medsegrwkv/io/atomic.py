"""The one way every result reaches the disk: write beside the target, read it back, then rename.

Writers do not always say when the disk is full (SimpleITK's NIfTI writer returns normally after
a short write), so nothing is renamed into place before it has been read back and found whole.
A failed write is one sentence (code `output_not_writable`) and leaves the old file untouched.
A replaced file keeps its permissions and a new one gets what the umask gives any new file, though
some writers create theirs private (safetensors 0.8 writes 0600 files: safetensors/safetensors#782),
so weights a site trains stay readable by the Slicer of another user.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medsegrwkv.errors import ErrorCode, MedSegError

_UMASK = os.umask(0o022)  # read once at import (os.umask both sets and returns it), then put back
os.umask(_UMASK)


class IncompleteWrite(Exception):
    """Raised by a `verify` callback: what was read back differs from what was meant to be written."""


def write_error(path: Path, reason: str) -> MedSegError:
    return MedSegError(f"Cannot write {path}: {reason}.", code=ErrorCode.OUTPUT_NOT_WRITABLE)


def _os_reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def check_writable(path: str | Path) -> None:
    """Fail before any work when `path` cannot be written: it is a folder, or its folder is missing
    or refuses a new file (tried for real: root passes access checks, a read-only disk does not)."""
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise write_error(path, "it is a folder")
    if not parent.is_dir():
        raise write_error(path, f"the folder {parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise write_error(path, f"the folder {parent} is not writable ({_os_reason(exc)})") from exc


def write_atomic(path: str | Path, write: Callable[[Path], None], verify: Callable[[Path], None],
                 writer_failed: str = "the writer failed (disk full?)") -> None:
    """`write(tmp)` a file under `path`'s name in a temporary folder beside it, `verify(tmp)` that it
    reads back whole, then move it (and any side files, e.g. an .mhd's .raw; the main file last)
    into place. `writer_failed` is the reason given when `write` raises something other than OSError."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise write_error(path, "it is a folder")
    if not path.parent.is_dir():
        raise write_error(path, f"the folder {path.parent} does not exist")
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as exc:
        raise write_error(path, _os_reason(exc)) from exc
    try:
        tmp = tmp_dir / path.name
        try:
            write(tmp)
        except OSError:
            raise
        except Exception as exc:  # library writers raise their own types (RuntimeError, SafetensorError, ...)
            raise write_error(path, writer_failed) from exc
        try:
            verify(tmp)
        except Exception as exc:  # whatever a reader raises on our own fresh file: it is not whole
            raise write_error(path, "the file did not read back whole after writing (is the disk full?)") from exc
        for written in sorted(tmp_dir.iterdir(), key=lambda f: f.name == path.name):
            target = path.parent / written.name
            _give_mode(written, target)
            os.replace(written, target)
    except OSError as exc:
        raise write_error(path, _os_reason(exc)) from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _give_mode(written: Path, target: Path) -> None:
    """`written` gets `target`'s permission bits where it exists, else those of an ordinary new file."""
    if os.name == "nt":
        return
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    os.chmod(written, mode)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Bytes to `path`, read back and compared before the rename."""
    def verify(tmp: Path) -> None:
        if tmp.read_bytes() != data:
            raise IncompleteWrite(f"{tmp} holds {tmp.stat().st_size} of {len(data)} bytes")

    write_atomic(path, lambda tmp: tmp.write_bytes(data), verify)


def write_npz_atomic(path: str | Path, arrays: dict[str, Any]) -> None:
    """Arrays to a compressed .npz, each read back and compared before the rename."""
    def verify(tmp: Path) -> None:
        with np.load(tmp) as back:
            if any(not np.array_equal(back[k], np.asarray(v)) for k, v in arrays.items()):
                raise IncompleteWrite(f"{tmp} does not hold the arrays that were written")

    write_atomic(path, lambda tmp: np.savez_compressed(tmp, **arrays), verify)
