"""Parameter and FLOP counts, as `medsegrwkv models` and the benchmark report them."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from medsegrwkv.nets.registry import create_model, get_spec


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reference_input_shape(name: str, config: dict[str, Any] | None = None) -> tuple[int, ...]:
    """One 256x256 slice for 2D models (a grader's own input size), one sliding-window crop for 3D
    models; `config` (a manifest's) may change the input channels or a grader's size."""
    spec = get_spec(name)
    entries = {**spec.defaults, **(config or {})}
    channels = entries.get("in_channels", 1)
    if spec.task == "grading":  # graders see one fixed-size slice (medsegrwkv.grading.dataset)
        return (1, channels, entries["input_size"], entries["input_size"])
    if spec.spatial_dims == 3 and spec.roi_size:
        return (1, channels, *spec.roi_size)
    return (1, channels, 256, 256) if spec.spatial_dims == 2 else (1, channels, 16, 160, 160)


def reference_input_label(name: str) -> str:
    """What one GFLOPs figure is for, in words: '256x256 slice' or '16x160x160 window'."""
    spatial = reference_input_shape(name)[2:]
    return "x".join(map(str, spatial)) + (" slice" if len(spatial) == 2 else " window")


@torch.no_grad()
def count_gflops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """GFLOPs of one forward pass by torch.utils.flop_counter (2 FLOPs per multiply-add;
    element-wise operations are not counted). Counted on a copy on the meta device (shapes only,
    instant even for large 3D networks); a network with an operation that needs real values is
    run on the CPU instead."""
    model.eval()
    try:
        return _gflops(copy.deepcopy(model).to("meta"), torch.zeros(shape, device="meta"))
    except (RuntimeError, NotImplementedError):
        return _gflops(model, torch.zeros(shape))


def _gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    # The RWKV network's fast inference route reorders some linear maps (the decoder's 1x1 conv
    # before the upsampling); the count is of the network as defined, its plain route.
    reference = getattr(model, "use_reference", None)
    before = getattr(model, "reference", False)
    if reference is not None:
        reference(True)
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        if reference is not None:
            reference(before)
    return counter.get_total_flops() / 1e9


_COUNTED: dict[tuple[str, str], dict[str, Any]] = {}
CACHE_FILE = "complexity.json"


def cache_dir() -> Path:
    """Where counts persist between runs: $MEDSEGRWKV_CACHE_DIR, else $XDG_CACHE_HOME/medsegrwkv."""
    if os.environ.get("MEDSEGRWKV_CACHE_DIR"):
        return Path(os.environ["MEDSEGRWKV_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medsegrwkv"


@lru_cache(maxsize=1)
def networks_digest() -> str:
    """A digest of the network code: a count stored under another digest may be stale."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: count again
    return stored if isinstance(stored, dict) else {}


def _store(path: Path, key: str, value: dict[str, Any]) -> None:
    """Add one count to the cache file; a cache that cannot be written is only slower."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = _read_cache(path)
        stored[key] = value
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def complexity(name: str, config: dict[str, Any] | None = None) -> dict[str, float | int | list[int]]:
    """Size of `name` built with `config` (a manifest's config: the overrides it was trained with).
    Counting builds the network and traces it (up to seconds each, and `medsegrwkv models` asks for
    every model), so counts are kept per process and in a cache file keyed by the network code's
    digest, name and config."""
    key = (name, json.dumps(config or {}, sort_keys=True, default=repr))
    if key not in _COUNTED:
        path = cache_dir() / CACHE_FILE
        stored_key = f"{networks_digest()}|{key[0]}|{key[1]}"
        value = _read_cache(path).get(stored_key)
        if not (isinstance(value, dict) and {"params", "gflops", "flops_input"} <= set(value)):
            model = create_model(name, **(config or {}))
            shape = reference_input_shape(name, config)
            value = {"params": count_parameters(model), "gflops": count_gflops(model, shape),
                     "flops_input": list(shape)}
            _store(path, stored_key, value)
        _COUNTED[key] = value
    return copy.deepcopy(_COUNTED[key])
