"""Probability ensembles (nets/ensemble.py, `ensemble-weights`): the ensemble's output is the weighted
mean of its members' probabilities on real slices, a single-slice member beside a 2.5D one sees the
centre slice, and a folder built from the bundled networks segments a real validation volume through
the deployed pipeline; what cannot form one ensemble is refused in one sentence, writing nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cli_helpers import assert_user_error, run_cli
from conftest import REPO
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.nets import create_model
from medsegrwkv.nets.ensemble import ProbabilityEnsemble
from medsegrwkv.training.acdc import list_cases
from medsegrwkv.training.evaluation import evaluate_cases
from medsegrwkv.weights.store import load_model

MEMBERS = [{"architecture": "medsegrwkv-t", "config": {}, "weight": 2.0},
           {"architecture": "unet2d", "config": {}, "weight": 1.0}]


def _real_slices(acdc: Path, segmenter: Segmenter, count: int = 3) -> torch.Tensor:
    """Normalised mid-ventricular slices of a real validation volume on the network grid."""
    from medsegrwkv.preprocess import prepare_image

    case = next(c for c in list_cases(acdc, "val") if c.image.name.startswith("patient013_frame01"))
    prepared = prepare_image(sitk.ReadImage(str(case.image), sitk.sitkFloat32), segmenter.manifest["preprocessing"])
    stack = prepared.array
    mid = stack.shape[0] // 2
    x = torch.from_numpy(np.ascontiguousarray(stack[mid - 1:mid - 1 + count, None]))
    pad = [(-s) % 32 for s in x.shape[-2:]]
    return torch.nn.functional.pad(x, (0, pad[1], 0, pad[0]))


@torch.no_grad()
def test_the_output_is_the_weighted_mean_of_the_members_probabilities(acdc):
    """With the bundled networks as members and votes 2:1, a softmax over the ensemble's output gives
    2/3 of the RWKV network's probabilities plus 1/3 of the UNet's on real slices, and its argmax
    differs from each member's somewhere (it is not one of them)."""
    rwkv, unet = Segmenter.from_pretrained("medsegrwkv-t", "cpu"), Segmenter.from_pretrained("unet2d", "cpu")
    ensemble = ProbabilityEnsemble(MEMBERS).eval()
    ensemble.members[0].load_state_dict(rwkv.model.state_dict())
    ensemble.members[1].load_state_dict(unet.model.state_dict())
    x = _real_slices(acdc, rwkv)
    p_rwkv, p_unet = (torch.softmax(m.model(x).float(), 1) for m in (rwkv, unet))
    mean = torch.softmax(ensemble(x), 1)
    torch.testing.assert_close(mean, 2 / 3 * p_rwkv + 1 / 3 * p_unet, rtol=0, atol=1e-5)
    labels = mean.argmax(1)
    assert (labels != p_unet.argmax(1)).any() and (labels == p_rwkv.argmax(1)).float().mean() > 0.95


@torch.no_grad()
def test_a_single_slice_member_sees_the_centre_slice_of_a_25d_input():
    torch.manual_seed(0)
    members = [{"architecture": "medsegrwkv-t", "config": {"in_channels": 3}, "weight": 1.0},
               {"architecture": "unet2d", "config": {}, "weight": 1.0}]
    ensemble = ProbabilityEnsemble(members, in_channels=3).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = (torch.softmax(ensemble.members[0](x), 1) + torch.softmax(ensemble.members[1](x[:, 1:2]), 1)) / 2
    torch.testing.assert_close(torch.softmax(ensemble(x), 1), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="more than the ensemble's in_channels"):
        ProbabilityEnsemble(members, in_channels=1)
    with pytest.raises(ValueError, match="positive"):
        ProbabilityEnsemble([{**MEMBERS[0], "weight": 0}, MEMBERS[1]])
    with pytest.raises(ValueError, match="not a 2D segmentation network"):
        ProbabilityEnsemble([MEMBERS[0], {"architecture": "unet3d", "config": {}, "weight": 1}])
    assert create_model("medsegrwkv-t+unet2d").weights == pytest.approx([2 / 3, 1 / 3])


def test_ensemble_weights_joins_real_networks_and_refuses_what_cannot_be_one(tmp_path, acdc):
    """`ensemble-weights medsegrwkv-t unet2d --votes 2 1` writes one folder holding both networks'
    weights unchanged, whose manifest and card name the members and votes; it segments a real validation
    volume through the deployed pipeline at least as well as the weaker member. Members in another
    order, a vote count that does not match, a vote of zero, another pipeline and an existing folder
    are refused, and nothing is written."""
    out = tmp_path / "ens"
    result = run_cli("ensemble-weights", "medsegrwkv-t", "unet2d", "--votes", "2", "1", "--output", str(out))
    assert result.returncode == 0, result.stderr
    model, manifest = load_model(out, "cpu")
    assert manifest["architecture"] == "medsegrwkv-t+unet2d" and manifest["name"] == "ens"
    for member, name in zip(model.members, ("medsegrwkv-t", "unet2d")):
        original, _ = load_model(name, "cpu")
        for (key, a), b in zip(member.state_dict().items(), original.state_dict().values()):
            assert torch.equal(a, b), key
    assert [m["weight"] for m in manifest["training"]["ensemble_of"]] == pytest.approx([2 / 3, 1 / 3])
    assert manifest["training"]["patients"] == "train"  # neither bundled network saw the validation patients
    assert "metrics" not in manifest
    card = (out / "MODEL_CARD.md").read_text()
    assert "probability ensemble of 2 networks" in card and "vote 0.67" in card and "Not validated yet" in card

    case = next(c for c in list_cases(acdc, "val") if c.image.name.startswith("patient014_frame01"))
    scores = {}
    for weights in (str(out), "medsegrwkv-t", "unet2d"):
        _, summary = evaluate_cases(Segmenter.from_pretrained(weights, "cpu"), [case], tta=False, show_progress=False)
        scores[weights] = summary["mean_dice"]
    assert scores[str(out)] >= min(scores["medsegrwkv-t"], scores["unet2d"]) - 0.005, scores

    before = (out / "model.safetensors").read_bytes()
    assert_user_error(run_cli("ensemble-weights", "medsegrwkv-t", "unet2d", "--output", str(out)),
                      "already holds weights")
    assert (out / "model.safetensors").read_bytes() == before
    refused = tmp_path / "refused"
    assert_user_error(run_cli("ensemble-weights", "unet2d", "medsegrwkv-t", "--output", str(refused)),
                      "no ensemble of unet2d, medsegrwkv-t")
    assert_user_error(run_cli("ensemble-weights", "medsegrwkv-t", "unet2d", "--votes", "1", "--output",
                              str(refused)), "one vote per weights folder")
    assert_user_error(run_cli("ensemble-weights", "medsegrwkv-t", "unet2d", "--votes", "1", "0", "--output",
                              str(refused)), "positive")
    assert_user_error(run_cli("ensemble-weights", "medsegrwkv-t", "--output", str(refused)), "at least two")
    other = tmp_path / "unet_other_pixels"
    shutil.copytree(REPO / "backend" / "medsegrwkv" / "weights" / "models" / "unet2d", other)
    edited = json.loads((other / "manifest.json").read_text())
    edited["preprocessing"]["spacing_xy_mm"] = [1.25, 1.25]
    (other / "manifest.json").write_text(json.dumps(edited))
    assert_user_error(run_cli("ensemble-weights", "medsegrwkv-t", str(other), "--output", str(refused)),
                      "spacing_xy_mm", "one pipeline")
    assert not refused.exists()


def test_the_bundled_ensemble_holds_todays_bundled_networks():
    """`medsegrwkv-t+unet2d` must be rebuilt whenever either bundled network changes: its members are
    byte for byte today's `medsegrwkv-t` and `unet2d`, both trained without the validation patients,
    and its own validation is above the RWKV network's alone."""
    from medsegrwkv.weights.store import load_manifest

    ensemble, manifest = load_model("medsegrwkv-t+unet2d", "cpu")
    members = manifest["training"]["ensemble_of"]
    assert [m["weights"] for m in members] == ["medsegrwkv-t", "unet2d"]
    for record, member in zip(members, ensemble.members):
        assert record["sha256"] == load_manifest(record["weights"])["sha256"], record["weights"]
        bundled, _ = load_model(record["weights"], "cpu")
        for (key, a), b in zip(member.state_dict().items(), bundled.state_dict().values()):
            assert torch.equal(a, b), key
    assert {m["patients"] for m in members} == {"train"}
    validation = manifest["metrics"]["validation"]
    assert "source" not in validation and validation["volumes"] == 40  # its own, not a recipe's
    assert validation["mean_dice"] > load_manifest("medsegrwkv-t")["metrics"]["validation"]["mean_dice"]
