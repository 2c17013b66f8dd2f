"""Probability ensembles as one weights folder (`medsegrwkv ensemble-weights`): trained 2D networks of
different designs, their softmax outputs averaged with fixed votes (nets/ensemble.py). Unlike a model
soup the members need not share a start or a design, but they cost their summed inference time, so an
ensemble is an option where time allows, not the CPU default (docs/medsegrwkv.md, "ensembling")."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Sequence

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.nets.registry import get_spec, slice_context
from medsegrwkv.training.soup import RANGES, check_new_weights_folder, differing_preprocessing, write_new_weights
from medsegrwkv.weights.store import load_model

# what must agree for the members' probabilities to describe the same voxels and labels
SHARED = ("task", "labels")


def ensemble_name(architectures: Sequence[str]) -> str:
    """The registered ensemble of these member architectures, e.g. `medsegrwkv-t+unet2d`."""
    name = "+".join(architectures)
    try:
        registered = "members" in get_spec(name).defaults
    except MedSegError:
        registered = False
    if not registered:
        raise MedSegError(f"No ensemble of {', '.join(architectures)} (in this order) is registered; the registered "
                          "ensembles are the models named A+B in `medsegrwkv models`.",
                          code=ErrorCode.BAD_ARGUMENT)
    return name


def _member_record(source: str | Path, manifest: dict[str, Any], weight: float) -> dict[str, Any]:
    t = manifest.get("training", {})
    validation = manifest.get("metrics", {}).get("validation", {})
    return {"weights": str(source), "architecture": manifest["architecture"], "sha256": manifest["sha256"],
            "weight": weight, "mean_dice": validation.get("mean_dice"), "recipe_validation": "source" in validation,
            **{k: t.get(k) for k in ("split", "patients", "epochs_completed", "wall_time_s")}}


def ensemble_weights(sources: Sequence[str | Path], votes: Sequence[float], output: str | Path) -> Path:
    """Write the ensemble of `sources` (weights folders or installed names, in the registered
    ensemble's order) with `votes` to the new folder `output`. The pipeline around the networks
    (pixel size, normalisation, post-processing) is the first member's and must be every member's;
    the validation is left to `evaluate --record` (or `--record-recipe-in`)."""
    out = Path(output)
    if len(sources) < 2:
        raise MedSegError("An ensemble needs at least two weights folders.", code=ErrorCode.BAD_ARGUMENT)
    check_new_weights_folder(out)
    if len(votes) != len(sources):
        raise MedSegError(f"Give one vote per weights folder: {len(sources)} folders, {len(votes)} votes.",
                          code=ErrorCode.BAD_ARGUMENT)
    if any(not (vote > 0 and math.isfinite(vote)) for vote in votes):
        raise MedSegError("Every vote must be a positive, finite number.", code=ErrorCode.BAD_ARGUMENT)
    loaded = [load_model(source, "cpu") for source in sources]
    manifests = [manifest for _, manifest in loaded]
    name = ensemble_name([m["architecture"] for m in manifests])
    first = manifests[0]
    for source, manifest in zip(sources[1:], manifests[1:]):
        for key in SHARED:
            if manifest.get(key) != first.get(key):
                raise MedSegError(f"{source} differs from {sources[0]} in its {key}; an ensemble's members must "
                                  "segment the same structures.", code=ErrorCode.BAD_ARGUMENT)
        fixed = differing_preprocessing(manifest, first)
        if fixed or manifest.get("postprocessing", {}) != first.get("postprocessing", {}):
            raise MedSegError(f"{source} differs from {sources[0]} in its "
                              f"{'preprocessing (' + ', '.join(fixed) + ')' if fixed else 'postprocessing'}; "
                              "an ensemble's members must share one pipeline.", code=ErrorCode.BAD_ARGUMENT)
    total = sum(votes)
    members = [{"architecture": m["architecture"], "config": m.get("config", {}), "weight": vote / total}
               for m, vote in zip(manifests, votes)]
    in_channels = max(2 * slice_context(m["architecture"], m.get("config", {})) + 1 for m in manifests)
    model = get_spec(name).builder(members=members, in_channels=in_channels)
    for member, (net, _) in zip(model.members, loaded):
        member.load_state_dict(net.state_dict())
    manifest = {k: copy.deepcopy(first[k]) for k in ("task", "spatial_dims", "labels", "licence", "postprocessing")
                if k in first}
    manifest.update(name=out.name, architecture=name, config={"members": members, "in_channels": in_channels},
                    preprocessing=copy.deepcopy(first["preprocessing"]))
    for key in RANGES:  # the members' measured training ranges: the narrowest that all were trained on
        ranges = [m["preprocessing"][key] for m in manifests if key in m["preprocessing"]]
        if len(ranges) == len(manifests) and max(r[0] for r in ranges) <= min(r[1] for r in ranges):
            manifest["preprocessing"][key] = [max(r[0] for r in ranges), min(r[1] for r in ranges)]
        else:  # not measured for every member, or no range all were trained on
            manifest["preprocessing"].pop(key, None)
    seen_all = any(m.get("training", {}).get("patients") == "all" for m in manifests)
    manifest["training"] = {"ensemble_of": [_member_record(s, m, vote / total)
                                            for s, m, vote in zip(sources, manifests, votes)],
                            "patients": "all" if seen_all else "train", "split": first.get("training", {}).get("split")}
    write_new_weights(model, manifest, out, "The ensemble")
    return out
