"""The one place that creates networks (as timm's and MONAI's registries do).

Builders register themselves with `@register_model`; callers use `create_model(name, **overrides)`.
Nothing else in the project imports model classes. Python runs `medsegrwkv/nets/__init__.py`, which
imports every architecture, before this module, so the registry is complete whenever it is used.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from medsegrwkv.errors import ErrorCode, MedSegError


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of the backend needs to know about an architecture."""

    name: str
    builder: Callable[..., nn.Module]
    task: str  # "segmentation" | "grading" | "refinement"
    spatial_dims: int  # 2: run slice by slice; 3: sliding window over `roi_size`
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    roi_size: tuple[int, ...] | None = None  # 3D sliding-window crop (D, H, W)
    pad_multiple: int = 32  # 2D inputs are padded to a multiple of this


_REGISTRY: dict[str, ModelSpec] = {}

# The model each task uses when none is named: the best on the fixed ACDC validation split
# among single networks with installed weights (see docs/ and the model cards); an ensemble may
# score higher but costs its members' summed time, beyond the CPU budget for a default.
DEFAULT_MODELS = {"segmentation": "medsegrwkv-t", "grading": "grader_regnetx_002", "refinement": "unet2d-refine"}


def register_model(
    name: str,
    *,
    task: str = "segmentation",
    spatial_dims: int = 2,
    description: str = "",
    roi_size: tuple[int, ...] | None = None,
    pad_multiple: int = 32,
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `builder(**config) -> nn.Module` under `name` with default config."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, task, spatial_dims, description, dict(defaults),
                                    roi_size, pad_multiple)
        return builder

    return wrap


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise MedSegError(unknown_model_sentence(name), code=ErrorCode.UNKNOWN_MODEL)
    return _REGISTRY[name]


def unknown_model_sentence(name: str) -> str:
    """The answer to a mistyped model name: the nearest registered names first, then every name by task."""
    close = difflib.get_close_matches(name, list(_REGISTRY), n=2, cutoff=0.75)
    hint = f" Did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
    by_task = "; ".join(f"{task}: {', '.join(s.name for s in models)}"
                        for task in DEFAULT_MODELS if (models := list_models(task)))
    return f"Unknown model '{name}'.{hint} Available models ({by_task})."


def list_models(task: str | None = None) -> list[ModelSpec]:
    return [s for n, s in sorted(_REGISTRY.items()) if task is None or s.task == task]


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The full config a model is built with: registered defaults updated by `overrides`."""
    return {**get_spec(name).defaults, **overrides}


def slice_context(name: str, config: dict[str, Any]) -> int:
    """Neighbour slices a side in the input of a 2D segmentation network built with `config`: one
    with 2n + 1 input channels sees each slice between n neighbours (2.5D); 0 for all others."""
    spec = get_spec(name)
    if spec.spatial_dims != 2 or spec.task != "segmentation":
        return 0
    in_channels = model_config(name, **config).get("in_channels", 1)
    if in_channels % 2 == 0:
        raise MedSegError(f"A 2D segmentation network takes a slice and as many neighbours on either side, an odd "
                          f"number of input channels, not in_channels={in_channels}.", code=ErrorCode.BAD_OVERRIDE)
    return (in_channels - 1) // 2


def config_changes(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a (manifest) config that differ from the architecture's registered defaults."""
    defaults = json.loads(json.dumps(get_spec(name).defaults))  # tuples as a manifest's lists
    return {k: v for k, v in config.items() if k not in defaults or defaults[k] != v}


def parse_overrides(name: str, items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (VALUE as JSON, else a plain string), checked by building the model once."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise MedSegError(f"'{item}' is not KEY=VALUE.", code=ErrorCode.BAD_OVERRIDE)
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    try:
        create_model(name, **overrides)
    except (TypeError, ValueError) as error:
        raise MedSegError(f"Model '{name}' does not accept {overrides}: {error}", code=ErrorCode.BAD_OVERRIDE) from None
    slice_context(name, overrides)
    return overrides


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build an untrained network; weights are loaded by `medsegrwkv.weights`."""
    return get_spec(name).builder(**model_config(name, **overrides))
