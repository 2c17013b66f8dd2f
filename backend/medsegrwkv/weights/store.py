"""Weights format (docs/design.md §6).

A weights folder holds `model.safetensors` (no pickle: loading an untrusted checkpoint must not
run code) and `manifest.json`: architecture and config, labels with names/colours/terminology,
preprocessing, training facts and licence, validation metrics, and the SHA-256 of the tensor
file. A mismatch is an error. Bundled weights live in `medsegrwkv/weights/models/<name>/`; a site's
retrained weights can live anywhere and are passed as a folder.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.io.atomic import IncompleteWrite, write_atomic
from medsegrwkv.nets.registry import create_model, get_spec
from medsegrwkv.weights.schema import check_manifest

MODELS_DIR = Path(__file__).resolve().parent / "models"
TENSORS = "model.safetensors"
MANIFEST = "manifest.json"


class WeightsStatus(str, Enum):
    VERIFIED = "verified"
    MISSING = "no weights"
    CORRUPT = "checksum mismatch"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def given_as_folder(name_or_dir: str | Path) -> bool:
    """Whether the user named a folder (a path, or an existing folder that is no bundled model's name), not a model."""
    path = Path(name_or_dir)
    return (isinstance(name_or_dir, Path) or (path / MANIFEST).is_file() or len(path.parts) > 1
            or (path.is_dir() and not (MODELS_DIR / path).is_dir()))


def weights_dir(name_or_dir: str | Path) -> Path:
    """A weights folder given by path, or the bundled folder of a registered model name."""
    return Path(name_or_dir) if given_as_folder(name_or_dir) else MODELS_DIR / str(name_or_dir)


def not_a_weights_folder(folder: Path) -> MedSegError:
    """The one sentence for a folder given as weights that holds none (a run's folder instead of its weights)."""
    if not folder.exists():
        why = f"The weights folder {folder} does not exist."
    elif not folder.is_dir():
        why = f"{folder} is a file, not a weights folder (a folder with {TENSORS} and {MANIFEST})."
    elif (folder / "weights" / MANIFEST).is_file():
        why = f"{folder} holds no {MANIFEST}; the weights of that training run are in {folder / 'weights'}."
    else:
        why = f"{folder} holds no {MANIFEST}, so it is not a weights folder (a folder with {TENSORS} and {MANIFEST})."
    return MedSegError(why, code=ErrorCode.WEIGHTS_MISSING)


def load_manifest(name_or_dir: str | Path) -> dict[str, Any] | None:
    path = weights_dir(name_or_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MedSegError(f"The weights manifest {path} cannot be read ({exc}).", code=ErrorCode.BAD_WEIGHTS) from exc
    check_manifest(manifest, str(path))
    return manifest


def weights_status(name_or_dir: str | Path) -> WeightsStatus:
    folder = weights_dir(name_or_dir)
    manifest = load_manifest(folder)
    if manifest is None or not (folder / TENSORS).is_file():
        return WeightsStatus.MISSING
    return WeightsStatus.VERIFIED if sha256_file(folder / TENSORS) == manifest.get("sha256") else WeightsStatus.CORRUPT


def save_weights(model: nn.Module, manifest: dict[str, Any], out_dir: str | Path, fp16: bool = True) -> Path:
    """Write tensors and manifest atomically; the manifest gets the tensor file's SHA-256."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    digest: list[str] = []

    def verify(tmp: Path) -> None:
        back = load_file(str(tmp))
        if back.keys() != state.keys() or any(not torch.equal(back[k], v) for k, v in state.items()):
            raise IncompleteWrite(f"{tmp} does not hold the tensors that were written")
        digest.append(sha256_file(tmp))

    write_atomic(out / TENSORS, lambda tmp: save_file(state, str(tmp)), verify)
    save_manifest(out, {**manifest, "sha256": digest[0], "dtype": "float16" if fp16 else "float32"})
    return out


def save_manifest(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Replace a weights folder's manifest atomically (the tensors and their checksum stay)."""
    from medsegrwkv.io.text import write_text_atomic

    check_manifest(manifest, str(Path(folder) / MANIFEST))
    write_text_atomic(Path(folder) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def load_model(name_or_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the manifest's architecture and load verified weights, in float32, in eval mode."""
    folder = weights_dir(name_or_dir)
    if not given_as_folder(name_or_dir):
        get_spec(str(name_or_dir))  # unknown names fail with the list of known models
    elif not (folder / MANIFEST).is_file():
        raise not_a_weights_folder(folder)
    elif not (folder / TENSORS).is_file():
        raise MedSegError(f"{folder} holds a {MANIFEST} but no {TENSORS}; copy the whole weights folder.",
                          code=ErrorCode.WEIGHTS_MISSING)
    manifest = load_manifest(folder)
    if manifest is None or not (folder / TENSORS).is_file():
        raise MedSegError(f"Model '{name_or_dir}' has no installed weights; train it or choose another model "
                          "(see `medsegrwkv models`).", code=ErrorCode.WEIGHTS_MISSING)
    if sha256_file(folder / TENSORS) != manifest.get("sha256"):
        raise MedSegError(f"The weights in {folder / TENSORS} do not match the checksum in their manifest; "
                          "the file is corrupt or was altered.", code=ErrorCode.CHECKSUM_MISMATCH)
    try:
        model = create_model(manifest["architecture"], **manifest.get("config", {}))
    except (TypeError, ValueError, KeyError, ArithmeticError, AssertionError, RuntimeError) as exc:
        raise MedSegError(f"The manifest in {folder} has a config that architecture '{manifest['architecture']}' "
                          f"cannot be built with ({exc}).", code=ErrorCode.BAD_WEIGHTS) from exc
    try:
        tensors = load_file(str(folder / TENSORS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MedSegError(f"The weights file {folder / TENSORS} is damaged and cannot be read ({exc}).",
                          code=ErrorCode.BAD_WEIGHTS) from exc
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in tensors.values()):
        raise MedSegError(f"The weights file {folder / TENSORS} holds NaN or infinite values.",
                          code=ErrorCode.BAD_WEIGHTS)
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MedSegError(f"The weights in {folder} do not fit architecture '{manifest['architecture']}'.",
                          code=ErrorCode.BAD_WEIGHTS) from exc
    return model.to(device).eval(), manifest
