"""Weight averaging ("model soup", Wortsman et al., ICML 2022): runs fine-tuned from the same weights,
differing in seed, augmentation or loss, averaged tensor by tensor into one network. Unlike an
ensemble it costs nothing at inference, so it fits the CPU speed budget; it only works for runs that
share their starting weights (they stay in one basin of the loss), which is checked."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.training.loop import export_weights
from medsegrwkv.weights.model_card import render_segmentation_card
from medsegrwkv.weights.store import MANIFEST, TENSORS, load_model

# preprocessing entries measured on each run's training data: the average takes their union
RANGES = ("heart_size_mm", "noise_sigma")
# what must agree for tensors to mean the same thing and for the pipeline around them to be one
SHARED = ("architecture", "config", "task", "labels", "postprocessing")


def differing_preprocessing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The preprocessing entries two manifests must share but do not (the measured RANGES may differ)."""
    pa, pb = a["preprocessing"], b["preprocessing"]
    return sorted(k for k in {*pa, *pb} if k not in RANGES and pa.get(k) != pb.get(k))


def _start(manifest: dict[str, Any]) -> str | None:
    init = manifest.get("training", {}).get("init")
    return init.get("sha256") if isinstance(init, dict) else None


def _check_compatible(sources: Sequence[str | Path], manifests: list[dict[str, Any]]) -> None:
    first = manifests[0]
    for source, manifest in zip(sources[1:], manifests[1:]):
        for key in SHARED:
            if manifest.get(key) != first.get(key):
                raise MedSegError(f"{source} differs from {sources[0]} in its {key}; only weights of one network "
                                  "and one pipeline can be averaged.", code=ErrorCode.BAD_ARGUMENT)
        fixed = differing_preprocessing(manifest, first)
        if fixed:
            raise MedSegError(f"{source} differs from {sources[0]} in its preprocessing ({', '.join(fixed)}); "
                              "only weights of one pipeline can be averaged.", code=ErrorCode.BAD_ARGUMENT)
    starts = {_start(m) for m in manifests}
    if None in starts or len(starts) > 1:
        raise MedSegError("Only runs fine-tuned from the same starting weights (`train --init`) can be averaged; "
                          + ", ".join(f"{s} started from {(_start(m) or 'random weights')[:12]}"
                                      for s, m in zip(sources, manifests)) + ".", code=ErrorCode.BAD_ARGUMENT)


def _source_record(source: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    t = manifest.get("training", {})
    return {"weights": str(source), "sha256": manifest["sha256"],
            "mean_dice": manifest.get("metrics", {}).get("validation", {}).get("mean_dice"),
            **{k: t.get(k) for k in ("seed", "augmentation", "dice", "epochs_completed", "patients")}}


def check_new_weights_folder(out: Path) -> None:
    """A folder that new weights may be written to: not a file, and holding no weights (never overwritten)."""
    if out.exists() and not out.is_dir():
        raise MedSegError(f"--output {out} is a file; give a new folder for the weights.", code=ErrorCode.BAD_OUTPUT)
    if (out / MANIFEST).exists() or (out / TENSORS).exists():
        raise MedSegError(f"{out} already holds weights; choose a new output folder (nothing was overwritten).",
                          code=ErrorCode.BAD_ARGUMENT)


def average_weights(sources: Sequence[str | Path], output: str | Path) -> Path:
    """Write the uniform average of `sources` (weights folders or installed names) to the new folder `output`,
    with the first source's manifest, the union of their measured ranges and a record of every source;
    its validation is left to `evaluate --record` (or `--record-recipe-in` for all-patient weights)."""
    out = Path(output)
    if len(sources) < 2:
        raise MedSegError("Averaging needs at least two weights folders.", code=ErrorCode.BAD_ARGUMENT)
    check_new_weights_folder(out)
    loaded = [load_model(source, "cpu") for source in sources]
    manifests = [manifest for _, manifest in loaded]
    if manifests[0]["task"] != "segmentation":
        raise MedSegError(f"Averaging is for segmentation weights; {sources[0]} is a {manifests[0]['task']} model.",
                          code=ErrorCode.BAD_ARGUMENT)
    _check_compatible(sources, manifests)
    states = [model.state_dict() for model, _ in loaded]
    model = loaded[0][0]
    model.load_state_dict({k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
                           for k, v in states[0].items()})
    manifest = copy.deepcopy(manifests[0])
    for key in RANGES:
        ranges = [m["preprocessing"][key] for m in manifests if key in m["preprocessing"]]
        if len(ranges) == len(manifests):
            manifest["preprocessing"][key] = [min(r[0] for r in ranges), max(r[1] for r in ranges)]
        else:
            manifest["preprocessing"].pop(key, None)  # a range not measured for every source is not known
    training = manifest.setdefault("training", {})
    training["averaged_from"] = [_source_record(s, m) for s, m in zip(sources, manifests)]
    training["wall_time_s"] = round(sum(m.get("training", {}).get("wall_time_s") or 0 for m in manifests), 1)
    manifest.pop("metrics", None)  # the first source's validation does not describe the average
    manifest.pop("comparisons", None)
    write_new_weights(model, manifest, out, "The averaged weights")
    return out


def write_new_weights(model: torch.nn.Module, manifest: dict[str, Any], out: Path, what: str) -> None:
    """Export to a folder `check_new_weights_folder` allowed; a folder this call created is removed
    again if the export fails, so no half-written weights folder is left."""
    created = not out.exists()
    try:
        export_weights(model, manifest, out, render_segmentation_card)
    except (OSError, MedSegError) as exc:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, MedSegError):
            raise
        raise MedSegError(f"{what} cannot be written to {out} ({exc.strerror or exc}).",
                          code=ErrorCode.BAD_OUTPUT) from exc
