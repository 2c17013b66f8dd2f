"""The manifest's fields and their types, checked whenever a manifest is read or written (as timm
checks its pretrained configs), so a hand-edited or truncated manifest is one sentence at load
instead of a KeyError deep inside inference."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.nets.registry import get_spec

TASKS = ("segmentation", "refinement", "grading")
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class Manifest:
    """A weights folder's `manifest.json` (docs/design.md §6); extra keys are kept, not checked."""

    name: str
    architecture: str  # a registered model name (medsegrwkv.nets.registry)
    task: str  # one of TASKS
    config: dict  # the architecture's config overrides the weights were trained with
    spatial_dims: int  # 2 or 3
    labels: Any  # segmentation/refinement: [{"value": int, "name": str, ...}]; grading: the score scale
    preprocessing: dict
    sha256: str  # of model.safetensors
    dtype: str = "float16"
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    licence: str = ""
    calibration: dict = field(default_factory=dict)  # graders: temperature scaling
    comparisons: list = field(default_factory=list)  # `compare --record-in` tables
    postprocessing: dict = field(default_factory=dict)  # segmentation: {"trim_basal_rv": bool}


_TYPES = {"str": (str, "text"), "dict": (dict, "an object"), "int": (int, "an integer"), "list": (list, "a list"),
          "Any": (object, "anything")}


def _numbers(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def check_manifest(data: Any, source: str) -> Manifest:
    """The manifest as a `Manifest`, or one sentence (bad_weights) naming the first wrong field."""
    def bad(problem: str) -> MedSegError:
        return MedSegError(f"The weights manifest {source} {problem}; restore it from the weights' source or "
                           "retrain.", code=ErrorCode.BAD_WEIGHTS)

    if not isinstance(data, dict):
        raise bad(f"must be a JSON object, not a {type(data).__name__}")
    values = {}
    for spec in dataclasses.fields(Manifest):
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        if spec.name not in data:
            if required:
                raise bad(f"lacks the field '{spec.name}'")
            continue
        value, (wanted, noun) = data[spec.name], _TYPES[str(spec.type)]
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise bad(f"is wrong: '{spec.name}' must be {noun}")
        values[spec.name] = value
    manifest = Manifest(**values)
    if manifest.task not in TASKS:
        raise bad(f"names the task '{manifest.task}', not one of {', '.join(TASKS)}")
    if manifest.spatial_dims not in (2, 3):
        raise bad(f"gives spatial_dims {manifest.spatial_dims}, not 2 or 3")
    if manifest.dtype not in DTYPES:
        raise bad(f"gives the dtype '{manifest.dtype}', not one of {', '.join(DTYPES)}")
    if not re.fullmatch(r"[0-9a-f]{64}", manifest.sha256):
        raise bad("has a sha256 that is not 64 hexadecimal digits")
    get_spec(manifest.architecture)  # an unknown architecture names the known ones
    prep = manifest.preprocessing
    if "spacing_xy_mm" in prep and not (_numbers(prep["spacing_xy_mm"], 2) and min(prep["spacing_xy_mm"]) > 0):
        raise bad("is wrong: 'preprocessing.spacing_xy_mm' must be two positive numbers")  # resampling divides by it
    if "percentiles" in prep and not (_numbers(prep["percentiles"], 2)
                                      and 0 <= prep["percentiles"][0] < prep["percentiles"][1] <= 100):
        raise bad("is wrong: 'preprocessing.percentiles' must be two numbers with 0 <= lower < upper <= 100")
    if "heart_size_mm" in prep and not (_numbers(prep["heart_size_mm"], 2)
                                        and 0 < prep["heart_size_mm"][0] <= prep["heart_size_mm"][1]):
        raise bad("is wrong: 'preprocessing.heart_size_mm' must be two numbers with 0 < smallest <= largest")
    if "noise_sigma" in prep and not (_numbers(prep["noise_sigma"], 2) and 0 <= prep["noise_sigma"][0] <= prep["noise_sigma"][1]):
        raise bad("is wrong: 'preprocessing.noise_sigma' must be two numbers with 0 <= least <= most")
    if not isinstance(prep.get("grader_input", {}), dict):
        raise bad("is wrong: 'preprocessing.grader_input' must be an object")
    if not isinstance(manifest.postprocessing.get("trim_basal_rv", False), bool):
        raise bad("is wrong: 'postprocessing.trim_basal_rv' must be true or false")
    if manifest.task != "grading":
        labels = manifest.labels
        if not (isinstance(labels, list) and labels and all(
                isinstance(label, dict) and isinstance(label.get("value"), int) and not isinstance(label["value"], bool)
                and isinstance(label.get("name"), str) for label in labels)):
            raise bad("has labels that are not a list of {\"value\": integer, \"name\": text}")
        if len({label["value"] for label in labels}) != len(labels):
            raise bad("gives two labels the same value")
    return manifest
