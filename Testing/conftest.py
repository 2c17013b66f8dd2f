"""Shared paths and fixtures. The real data lives beside the repository in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
ACDC = DATA / "acdc"
SUNNYBROOK = DATA / "sunnybrook"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (the shared data folder sits beside the repository)")
    return path


@pytest.fixture(scope="session")
def acdc() -> Path:
    return require(ACDC)


@pytest.fixture(scope="session")
def sunnybrook() -> Path:
    return require(SUNNYBROOK)


@pytest.fixture(scope="session")
def default_segmenter():
    """The committed default model on the CPU (tests must not depend on a GPU)."""
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.nets.registry import DEFAULT_MODELS

    return Segmenter.from_pretrained(DEFAULT_MODELS["segmentation"], "cpu")
