"""What Slicer's Python needs before the worker can start, and how to get it.

PyTorch must come from the PyTorch extension (PyTorchUtils), which picks the CUDA build that fits
the machine; pip's default wheel may not. The backend itself ships with the module: next to it in
an extension build (`MedSegRWKVBackend`, copied by CMake) or as `../backend` in a source checkout,
which is installed editable so that edits take effect on the next worker start.

Everything here reads files and package metadata only; nothing imports torch or the backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Tuple

BACKEND_DIST = "medsegrwkv"
BUNDLED_BACKEND_DIR = "MedSegRWKVBackend"
BUNDLED_SAMPLE_DIR = "MedSegRWKVSampleData"
SAMPLE_CASE = "SCD0000101"


@dataclass(frozen=True)
class BundledBackend:
    path: Path  # folder holding pyproject.toml
    version: str
    torch_requirement: str  # e.g. ">=2.1"
    checkout: bool  # a source checkout: install editable


@dataclass(frozen=True)
class SetupPlan:
    torch: str  # "ok" | "install" (with PyTorchUtils) | "missing"
    install_backend: bool
    pip_args: List[str] = field(default_factory=list)
    message: str = ""
    blocked: bool = False  # the module cannot fix it: the user must act as the message says

    @property
    def ready(self) -> bool:
        return self.torch == "ok" and not self.install_backend and not self.blocked


def installed_version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def parse_version(text: str) -> Tuple[int, ...]:
    """Leading numeric release of a version ('2.14.1+cu130' -> (2, 14, 1))."""
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def version_at_least(version: str, minimum: str) -> bool:
    have, need = parse_version(version), parse_version(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def _read_backend(path: Path, checkout: bool) -> Optional[BundledBackend]:
    pyproject = path / "pyproject.toml"
    if not pyproject.is_file():
        return None
    text = pyproject.read_text(encoding="utf-8")
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    torch = re.search(r'"torch\s*(>=\s*[0-9.]+)', text)
    if version is None or torch is None:
        raise ValueError(f"{pyproject} has no version or no torch requirement")
    return BundledBackend(path, version.group(1), torch.group(1).replace(" ", ""), checkout)


def find_bundled_backend(module_dir: Path) -> Optional[BundledBackend]:
    """The backend that came with this module: the build's copy, else the checkout's folder."""
    return (_read_backend(module_dir / BUNDLED_BACKEND_DIR, checkout=False)
            or _read_backend(module_dir.parent / "backend", checkout=True))


def find_sample_dicom(module_dir: Path) -> Optional[Path]:
    """The bundled Sunnybrook cine DICOM folder (used by the self-test)."""
    for root in (module_dir / BUNDLED_SAMPLE_DIR, module_dir.parent / "Resources" / "SampleData"):
        folder = root / SAMPLE_CASE / "dicom"
        if folder.is_dir():
            return folder
    return None


def backend_pip_args(bundled: BundledBackend) -> List[str]:
    """pip arguments that install the bundled backend (editable from a checkout)."""
    target = str(bundled.path)
    return ["--upgrade", "-e", target] if bundled.checkout else ["--upgrade", target]


def plan_setup(torch_version: Optional[str], backend_version: Optional[str], bundled: Optional[BundledBackend],
               pytorch_utils: bool, force_backend: bool = False) -> SetupPlan:
    """Decide what to install; `force_backend` reinstalls the backend (the module's Update button)."""
    requirement = bundled.torch_requirement if bundled else ">=2.1"
    minimum = requirement.lstrip(">=")
    messages = []
    if torch_version is not None and version_at_least(torch_version, minimum):
        torch = "ok"
    elif pytorch_utils:
        torch = "install"
        found = f"PyTorch {torch_version} is too old" if torch_version else "PyTorch is not installed"
        messages.append(f"{found}; the PyTorch extension will install PyTorch {requirement} "
                        "(a few GB, several minutes).")
    else:
        torch = "missing"
        messages.append(f"MedSegRWKV needs PyTorch {requirement} in Slicer's Python: install the PyTorch extension "
                        "from the Extensions Manager, restart Slicer, and try again.")
    if bundled is None:
        if backend_version is None:
            messages.append("The medsegrwkv backend is not installed and no copy came with this module; "
                            "reinstall the MedSegRWKV extension.")
        return SetupPlan(torch, False, [], " ".join(messages), blocked=torch == "missing" or backend_version is None)
    install = force_backend or backend_version is None or backend_version != bundled.version
    if install:
        how = "in editable mode from the source checkout" if bundled.checkout else "with pip"
        messages.append(f"The medsegrwkv backend {bundled.version} will be installed into Slicer's Python {how}.")
    return SetupPlan(torch, install, backend_pip_args(bundled) if install else [], " ".join(messages),
                     blocked=torch == "missing")
