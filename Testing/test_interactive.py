"""Click refinement (medsegrwkv.interactive): the simulated user, the click encoding, the
refinement network on real validation slices, the geometry of clicks on any voxel layout, the
trainer and the CLI, and the Slicer-free click bookkeeping of the module."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cli_helpers import assert_user_error, run_cli
from medsegrwkv.engine.protocol import decode_mask as worker_decode
from medsegrwkv.engine.protocol import encode_mask as worker_encode
from medsegrwkv.errors import MedSegError
from medsegrwkv.interactive import (
    INPUT_CHANNELS, Click, InteractiveImage, Refiner, VoxelClick, click_maps, next_click,
)
from medsegrwkv.nets.registry import DEFAULT_MODELS, create_model, get_spec, model_config
from medsegrwkv.training.acdc import list_cases
from medsegrwkv.training.click_evaluation import clicks_to_reach, evaluate_clicks
from medsegrwkv.training.refinement import RefineTrainConfig, transfer_weights
from medsegrwkv.weights import load_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSegRWKV"))
from MedSegRWKVLib import clicks as lib_clicks  # noqa: E402



# -- simulated user and click maps -----------------------------------------------------------------
def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_click_maps_put_positive_and_negative_clicks_in_their_channels() -> None:
    maps = click_maps([Click(10, 20, True), Click(40, 5, False)], (64, 64))
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps[0, 10, 20] == pytest.approx(1.0) and maps[1, 40, 5] == pytest.approx(1.0)
    assert maps[0, 40, 5] < 1e-6 and maps[1, 10, 20] < 1e-6
    assert 0.0 < maps[0, 10, 23] < 1.0  # a disc, not a single pixel
    assert not click_maps([], (8, 8)).any()


def test_next_click_goes_to_the_deepest_point_of_the_largest_error() -> None:
    truth = _disc((64, 64), (32, 32), 12)
    small_miss = truth & ~_disc((64, 64), (32, 42), 3)  # a 3-pixel-radius hole near the edge
    click = next_click(small_miss, truth)
    assert click is not None and click.positive and abs(click.y - 32) <= 1 and abs(click.x - 42) <= 1
    leak = truth | _disc((64, 64), (10, 10), 6)  # a false region larger than any missed one
    click = next_click(leak, truth)
    assert click is not None and not click.positive and abs(click.y - 10) <= 1 and abs(click.x - 10) <= 1
    assert next_click(truth, truth) is None
    rng = np.random.default_rng(0)  # training clicks: random, but always inside the error
    for _ in range(20):
        c = next_click(np.zeros_like(truth), truth, rng)
        assert c is not None and c.positive and truth[int(c.y), int(c.x)]


def test_clicks_to_reach_counts_the_first_click_that_reaches_the_target() -> None:
    assert clicks_to_reach([0.95, 0.5], 0.9) == 0
    assert clicks_to_reach([0.5, 0.8, 0.91, 0.92], 0.9) == 2
    assert clicks_to_reach([0.5, 0.6, 0.7], 0.9) == 2  # never reached: the maximum


def test_refinement_model_is_the_segmenter_with_mask_and_click_channels() -> None:
    spec = get_spec(DEFAULT_MODELS["refinement"])
    assert spec.task == "refinement" and spec.defaults["in_channels"] == len(INPUT_CHANNELS)
    torch.manual_seed(0)
    source = create_model("unet2d")
    refine = create_model(spec.name)
    assert transfer_weights(source.state_dict(), refine) > 0
    src, dst = source.state_dict(), refine.state_dict()
    widened = [k for k in dst if k in src and dst[k].ndim > 1 and dst[k].shape[1] > src[k].shape[1]]
    assert widened, "the first layer gained the new input channels"
    for key in widened:
        assert torch.equal(dst[key][:, :1], src[key]) and not dst[key][:, 1:].any()
    same = [k for k in dst if k in src and dst[k].shape == src[k].shape]
    assert all(torch.equal(dst[k], src[k]) for k in same)


# -- geometry: clicks on any voxel layout -----------------------------------------------------------
@pytest.fixture(scope="module")
def untrained_refiner() -> Refiner:
    torch.manual_seed(0)
    name = DEFAULT_MODELS["refinement"]
    return Refiner(create_model(name), {"name": name, "architecture": name, "config": model_config(name),
                                        "task": "refinement"}, torch.device("cpu"))


def test_refine_touches_only_the_clicked_slice_and_does_not_depend_on_the_voxel_layout(
        acdc: Path, untrained_refiner: Refiner) -> None:
    case = list_cases(acdc, "val")[0]
    image = sitk.ReadImage(str(case.image), sitk.sitkFloat32)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))) == 3  # (k, j, i)
    k = mask.shape[0] // 2
    j, i = np.argwhere(mask[k]).mean(axis=0).round()
    refined, changed, axis = InteractiveImage(image).refine(untrained_refiner, mask, [VoxelClick((i, j, k), True)], 3)
    assert axis == 2 and changed == [k]
    others = [n for n in range(mask.shape[0]) if n != k]
    assert np.array_equal(refined[others], mask[others])  # untouched slices, voxel for voxel

    # The same anatomy stored with the slice axis first and one in-plane axis flipped.
    stored = sitk.Flip(sitk.PermuteAxes(image, [2, 0, 1]), [False, True, False])
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    stored_mask = sitk.GetArrayFromImage(sitk.Flip(sitk.PermuteAxes(mask_image, [2, 0, 1]), [False, True, False]))
    point = image.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
    ijk = stored.TransformPhysicalPointToContinuousIndex(point)
    other, changed2, axis2 = InteractiveImage(stored).refine(untrained_refiner, stored_mask.astype(bool),
                                                             [VoxelClick(tuple(ijk), True)], 3)
    assert axis2 == 0 and changed2 == [int(round(ijk[0]))]
    back = sitk.GetImageFromArray(other.astype(np.uint8))
    back.CopyInformation(stored)
    resampled = sitk.GetArrayFromImage(sitk.Resample(back, image, sitk.Transform(), sitk.sitkNearestNeighbor))
    assert np.array_equal(resampled.astype(bool), refined)


@pytest.mark.parametrize("click, label, code", [
    (VoxelClick((-5.0, 10.0, 2.0), True), 3, "bad_click"),
    (VoxelClick((10.0, 10.0, 99.0), False), 3, "bad_click"),
    (VoxelClick((10.0, 10.0, 2.0), True), 7, "unknown_segment"),
])
def test_refine_rejects_bad_clicks_and_segments(acdc: Path, untrained_refiner: Refiner, click: VoxelClick,
                                                label: int, code: str) -> None:
    image = sitk.ReadImage(str(list_cases(acdc, "val")[0].image), sitk.sitkFloat32)
    mask = np.zeros(tuple(reversed(image.GetSize())), dtype=bool)
    with pytest.raises(MedSegError) as error:
        InteractiveImage(image).refine(untrained_refiner, mask, [click], label)
    assert error.value.code == code and error.value.message.endswith(".")
    with pytest.raises(MedSegError, match="mask has shape"):
        InteractiveImage(image).refine(untrained_refiner, mask[:-1], [VoxelClick((10, 10, 1), True)], 3)


# -- the trained refinement network on real validation slices --------------------------------------
def test_clicks_improve_real_validation_slices(acdc: Path, default_segmenter) -> None:
    """Two fixed validation volumes (patient013, true geometry), deterministic clicks.

    Not yet what it should be (docs/interactive.md, "True geometry"): the refiner retrained on the
    true-geometry copy (12 epochs) improves the myocardium (0.896 -> 0.906 after 3 clicks on the
    session-17 default's masks) but leaves the RV and LV about where they were or a little below
    (RV 0.878 -> 0.870, LV 0.954 -> 0.945; before clicks were held near their border on slices
    that hold the structure, RV 0.878 -> 0.867), and from an empty mask reaches RV 0.59, Myo 0.79,
    LV 0.87. The earlier refiner, trained on the nominal-spacing copy, fell to RV 0.777 here, and
    an empty RV stalled at 0.50. The test holds that line: no structure loses more than 1 point,
    clicks build a mask from nothing, and more clicks never make it worse."""
    refiner = Refiner.from_pretrained(DEFAULT_MODELS["refinement"], "cpu")
    cases = list_cases(acdc, "val")[:2]
    summary = evaluate_clicks(refiner, default_segmenter, cases, max_clicks=3, show_progress=False)
    auto = summary["automatic"]
    for name, row in auto.items():
        assert row["slices"] > 5 and row["dice_3"] > row["dice_0"] - 0.01, (name, row)
    assert auto["Myo"]["dice_3"] > auto["Myo"]["dice_0"] + 0.005
    for name, row in summary["empty"].items():
        assert row["dice_0"] == 0.0 and row["dice_3"] >= row["dice_1"] > 0.5, (name, row)


def test_a_click_changes_only_the_region_it_touches() -> None:
    from medsegrwkv.interactive.clicks import changes_near_clicks

    mask = np.zeros((40, 40), dtype=bool)
    mask[5:15, 5:15] = True
    proposal = mask.copy()
    proposal[5:15, 15:20] = True  # grows next to the click
    proposal[30:35, 30:35] = True  # and far away: drift that must not reach the user's mask
    region = changes_near_clicks(mask, proposal, [Click(10.0, 17.0, True)])
    assert region[5:15, 15:20].all() and not region[30:35, 30:35].any() and region.sum() == 50
    assert not changes_near_clicks(mask, proposal, []).any()


def test_a_click_on_a_small_structure_corrects_its_border_and_on_an_empty_slice_draws_it() -> None:
    """On a slice that holds the structure the change stays near the click (here 6 pixels, the
    8 x 8 square being smaller); on an empty slice the click takes the whole region it touches."""
    from medsegrwkv.interactive.clicks import changes_near_clicks

    mask = np.zeros((60, 60), dtype=bool)
    mask[20:28, 20:28] = True
    proposal = mask.copy()
    proposal[20:28, 28:50] = True  # one connected growth reaching 22 pixels out from the square
    region = changes_near_clicks(mask, proposal, [Click(24.0, 29.0, True)])
    assert region[20:28, 28:34].all() and not region[:, 36:].any()
    empty = np.zeros_like(mask)
    assert changes_near_clicks(empty, proposal, [Click(24.0, 29.0, True)]).sum() == proposal.sum()
    big = np.zeros_like(mask)
    big[5:55, 5:28] = True  # a large structure (radius about 19 pixels) takes larger corrections
    grown = big | proposal
    assert changes_near_clicks(big, grown, [Click(24.0, 29.0, True)])[20:28, 28:47].all()


# -- trainer and CLI -------------------------------------------------------------------------------
def test_train_refine_cli_runs_resumes_and_exports(acdc: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "refine", "--data", str(acdc), "--output", str(out), "--epochs", "1", "--max-steps", "2",
            "--max-cases", "2", "--batch-size", "4", "--crop", "64", "--no-validation", "--device", "cpu"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    model, manifest = load_model(out / "weights", "cpu")
    assert manifest["task"] == "refinement" and manifest["training"]["init"] == RefineTrainConfig.init
    least, most = manifest["preprocessing"]["noise_sigma"]  # its two training volumes' noise (preprocess.noise)
    assert 0.002 < least <= most < 0.03
    assert (out / "weights" / "MODEL_CARD.md").read_text().startswith("# Model card")
    assert Refiner(model, manifest, torch.device("cpu")).probabilities(
        np.zeros((1, len(INPUT_CHANNELS), 40, 56), np.float32)).shape == (1, 40, 56)
    again = run_cli(*args[:7], "2", *args[8:])  # --epochs 2: resumes after the first
    assert again.returncode == 0 and "resumed" in again.stderr + again.stdout


def test_train_refine_fine_tunes_a_refiner_on_another_segmenters_masks(acdc: Path, tmp_path: Path) -> None:
    """The bundled refiner can be fine-tuned on the masks of the default segmenter (another architecture):
    the starting weights are the refiner's own, the automatic masks come from --automatic."""
    args = ["train", "refine", "--data", str(acdc), "--epochs", "1", "--max-steps", "1", "--max-cases", "2",
            "--batch-size", "2", "--crop", "64", "--no-validation", "--device", "cpu", "--init", "unet2d-refine"]
    assert_user_error(run_cli(*args, "--output", str(tmp_path / "no")), "--automatic")
    assert not (tmp_path / "no").exists()
    result = run_cli(*args, "--automatic", "medsegrwkv-t", "--output", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    model, manifest = load_model(tmp_path / "run" / "weights", "cpu")
    assert (manifest["training"]["init"], manifest["training"]["automatic"]) == ("unet2d-refine", "medsegrwkv-t")
    start, _ = load_model("unet2d-refine", "cpu")
    tuned, first = model.state_dict(), next(iter(start.state_dict()))
    assert tuned[first].shape == start.state_dict()[first].shape  # every channel carried over, none zeroed
    assert not torch.equal(tuned[first].float(), start.state_dict()[first].float())  # and it trained
    assert_user_error(run_cli("train", "segment", "--data", str(acdc), "--output", str(tmp_path / "seg"),
                              "--automatic", "medsegrwkv-t"), "--automatic")


def test_evaluate_clicks_bad_arguments_are_one_sentence(acdc: Path) -> None:
    assert_user_error(run_cli("evaluate-clicks", "--data", str(acdc), "--max-clicks", "0"), "--max-clicks")
    assert_user_error(run_cli("evaluate-clicks", "--data", str(acdc), "--model", "unet2d"), "not a click-refinement")


# -- the module's click bookkeeping (Slicer-free) --------------------------------------------------
def _session() -> lib_clicks.ClickSession:
    return lib_clicks.ClickSession("abc", 3, "medsegrwkv_lv_cavity", index_axis=2, shape=(4, 6, 8))


def test_session_sends_the_points_of_the_last_points_slice_with_the_current_mask() -> None:
    session = _session()
    mask = np.zeros((4, 6, 8), dtype=bool)
    mask[1, 2:4, 2:5] = True  # e.g. an edit the user made in the Segment Editor
    session.add((2.0, 3.0, 1.0), True)
    session.add((5.0, 1.0, 2.2), False)
    session.add((6.0, 4.0, 0.8), False)
    request = session.request(mask)
    assert request["op"] == "refine" and request["image_id"] == "abc" and request["label"] == 3
    assert request["points"] == [{"ijk": [2.0, 3.0, 1.0], "positive": True},
                                 {"ijk": [6.0, 4.0, 0.8], "positive": False}]
    assert np.array_equal(worker_decode(request["mask"]), mask)  # the worker reads the module's encoding
    with pytest.raises(ValueError, match="outside"):
        session.add((8.0, 0.0, 0.0), True)
    with pytest.raises(ValueError, match="shape"):
        session.request(mask[:2])


def test_session_applies_answers_and_undo_restores_each_slice_exactly() -> None:
    session = _session()
    mask = np.zeros((4, 6, 8), dtype=bool)
    mask[1, 1:3, 1:3] = True
    original = mask.copy()
    session.add((2.0, 2.0, 1.0), True)
    first = np.ones((6, 8), dtype=bool)
    assert session.apply(mask, {"index_axis": 2, "slices": [{"index": 1, **worker_encode(first)}]}) == [1]
    assert mask[1].all() and np.array_equal(mask[[0, 2, 3]], original[[0, 2, 3]])
    after_first = mask.copy()
    mask[3, 0, 0] = True  # a Segment Editor edit between clicks survives undo of a later point
    session.add((1.0, 1.0, 1.0), False)
    second = first.copy()
    second[:3] = False
    session.apply(mask, {"index_axis": 2, "slices": [{"index": 1, **worker_encode(second)}]})
    assert not mask[1, :3].any()
    assert session.undo(mask) == lib_clicks.Point((1.0, 1.0, 1.0), False)
    assert np.array_equal(mask[1], after_first[1]) and mask[3, 0, 0]
    assert session.undo(mask) is not None and np.array_equal(mask[1], original[1])
    assert session.undo(mask) is None
    session.add((2.0, 2.0, 1.0), True)
    assert session.accept() == 1 and not session.points
    with pytest.raises(ValueError, match="slice axis"):
        session.add((2.0, 2.0, 1.0), True)
        session.apply(mask, {"index_axis": 0, "slices": []})


def test_session_takes_refined_voxels_from_the_other_segments_and_undo_returns_them() -> None:
    session = _session()
    mask = np.zeros((4, 6, 8), dtype=bool)
    myocardium = np.zeros_like(mask)
    myocardium[2, :, 4:] = True
    other_slice = myocardium.copy()
    others = {"medsegrwkv_lv_myocardium": myocardium}
    session.add((5.0, 2.0, 2.0), True)
    refined = np.zeros((6, 8), dtype=bool)
    refined[:, 3:6] = True  # the cavity grows into the myocardium
    session.apply(mask, {"index_axis": 2, "slices": [{"index": 2, **worker_encode(refined)}]}, others)
    assert not (mask & myocardium).any() and myocardium[2, :, 6:].all() and not myocardium[2, :, 4:6].any()
    session.undo(mask, others)
    assert not mask.any() and np.array_equal(myocardium, other_slice)


def test_session_slices_follow_the_volume_slice_axis() -> None:
    session = lib_clicks.ClickSession("x", 1, "medsegrwkv_rv_cavity", index_axis=0, shape=(5, 6, 7))
    mask = np.zeros((5, 6, 7), dtype=bool)
    session.add((3.0, 2.0, 1.0), True)
    slice_mask = np.ones((5, 6), dtype=bool)  # an i-slice of a (k, j, i) array is (k, j)
    session.apply(mask, {"index_axis": 0, "slices": [{"index": 3, **lib_clicks.encode_mask(slice_mask)}]})
    assert mask[:, :, 3].all() and mask.sum() == 30
    assert np.array_equal(lib_clicks.decode_mask(worker_encode(mask)), mask)


def test_correctable_segments_are_the_models_structures_present_in_the_segmentation() -> None:
    from medsegrwkv.weights.manifest import SEGMENTATION_LABELS

    specs = lib_clicks.correctable_segments(SEGMENTATION_LABELS, ["medsegrwkv_lv_cavity", "medsegrwkv_rv_cavity",
                                                                  "my_own_segment"])
    assert [s.name for s in specs] == ["RV cavity", "LV cavity"] and [s.value for s in specs] == [1, 3]
