"""`segment` end to end on real ACDC volumes: geometry is kept whatever the file's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsegrwkv.cli.main import main
from medsegrwkv.preprocess import Roi
from medsegrwkv.training.metrics import structure_metrics

CASE = "patient014/patient014_frame01"  # a validation patient (number % 20 == 14)


@pytest.fixture(scope="module")
def case(acdc: Path) -> tuple[sitk.Image, sitk.Image]:
    return (sitk.ReadImage(str(acdc / f"{CASE}.nii.gz"), sitk.sitkFloat32),
            sitk.ReadImage(str(acdc / f"{CASE}_gt.nii.gz")))


def _same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-7)


def _oblique(image: sitk.Image) -> sitk.Image:
    """The same voxels placed with oblique direction cosines and a different origin."""
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    angle = np.deg2rad(25)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    out = sitk.Image(image)
    out.SetDirection(tuple(rotation.flatten()))
    out.SetOrigin((-120.0, 35.5, 210.25))
    return out


def _layouts(image: sitk.Image) -> dict[str, sitk.Image]:
    """Physically identical copies stored with flipped and permuted voxel axes."""
    return {
        "flip_i": sitk.Flip(image, [True, False, False]),
        "flip_ij": sitk.Flip(image, [True, True, False]),
        "slices_first": sitk.PermuteAxes(image, [2, 0, 1]),
        "transposed_flipped": sitk.Flip(sitk.PermuteAxes(image, [1, 0, 2]), [False, True, True]),
    }


def test_prediction_is_accurate_on_a_validation_volume(default_segmenter, case):
    image, reference = case
    pred = default_segmenter.segment(image)
    _same_geometry(pred, image)
    m = structure_metrics(sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(reference), (10, 1.5625, 1.5625))
    assert min(m[s]["dice"] for s in ("RV", "Myo", "LV")) > 0.75, m


def test_layout_and_oblique_geometry_round_trip_through_cli(tmp_path, case):
    """Oblique direction cosines, flipped and permuted axes: output geometry equals the input's and
    the labels are the same physical labels as for the canonical file."""
    image = _oblique(case[0])
    base_in, base_out = tmp_path / "oblique.nii.gz", tmp_path / "oblique_labels.nii.gz"
    sitk.WriteImage(image, str(base_in))
    assert main(["segment", str(base_in), "-o", str(base_out), "--device", "cpu"]) == 0
    base = sitk.ReadImage(str(base_out))
    _same_geometry(base, image)
    assert (sitk.GetArrayViewFromImage(base) > 0).sum() > 1000
    for name, variant in _layouts(image).items():
        src, dst = tmp_path / f"{name}.nrrd", tmp_path / f"{name}_labels.nrrd"
        sitk.WriteImage(variant, str(src))
        assert main(["segment", str(src), "-o", str(dst), "--device", "cpu"]) == 0
        out = sitk.ReadImage(str(dst))
        _same_geometry(out, variant)
        # Resample the base result onto the variant's grid (exact: same voxel centres).
        expected = sitk.Resample(base, variant, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        agreement = (sitk.GetArrayViewFromImage(out) == sitk.GetArrayViewFromImage(expected)).mean()
        assert agreement == 1.0, f"{name}: {agreement}"


def test_anisotropic_resampled_input_is_resampled_there_and_back(default_segmenter, case):
    """A volume physically resampled to 1.2 x 1.1 mm pixels and 8 mm slices: the model works at its
    own spacing internally, the labelmap comes back on the input grid and still matches."""
    image, reference = case
    spacing = (1.2, 1.1, image.GetSpacing()[2])
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    fine = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)
    fine_ref = sitk.Resample(reference, fine, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    pred = default_segmenter.segment(fine)
    _same_geometry(pred, fine)
    m = structure_metrics(sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(fine_ref), (10, 1.1, 1.2))
    assert np.mean([m[s]["dice"] for s in ("RV", "Myo", "LV")]) > 0.8, m


def test_scanner_units_do_not_matter(default_segmenter, case):
    """Percentile normalisation: a linear change of intensity units gives the same labels."""
    image = case[0]
    a = sitk.GetArrayFromImage(default_segmenter.segment(image))
    b = sitk.GetArrayFromImage(default_segmenter.segment(image * 7.3 + 250.0))
    assert (a == b).mean() > 0.999


def test_roi_crops_before_inference_and_pastes_back(default_segmenter, case):
    image = case[0]
    full = sitk.GetArrayFromImage(default_segmenter.segment(image))
    k, j, i = np.nonzero(full)
    roi = Roi((int(i.min()) - 20, int(j.min()) - 20, 0), (int(i.max()) + 21, int(j.max()) + 21, image.GetSize()[2]))
    cropped = default_segmenter.segment(image, roi=roi)
    _same_geometry(cropped, image)
    c = sitk.GetArrayViewFromImage(cropped)
    inside = np.zeros_like(full, bool)
    inside[:, max(0, roi.start[1]):roi.stop[1], max(0, roi.start[0]):roi.stop[0]] = True
    assert not c[~inside].any()  # nothing outside the box
    m = structure_metrics(c, full, (10, 1.5625, 1.5625))  # the heart is found again inside it
    assert np.mean([m[s]["dice"] for s in ("RV", "Myo", "LV")]) > 0.85, m


def test_tta_averages_the_four_rotations_so_its_answer_turns_with_the_image(default_segmenter, case):
    """TTA over a group of views makes the prediction of a quarter-turned slice the quarter-turned
    prediction (exactly, up to float error); a single pass has no such property. With the flips the
    project used before, a quarter turn is not among the views and the property fails."""
    import torch

    from medsegrwkv.preprocess import prepare_image

    image, _ = case
    array = prepare_image(image).array
    slices = torch.from_numpy(array[len(array) // 2: len(array) // 2 + 2, None])  # two mid slices (2, 1, y, x)
    turned = torch.rot90(slices, 1, dims=(-2, -1))
    seg = default_segmenter
    with_tta = seg.batch_probabilities(turned, tta=True)
    expected = torch.rot90(seg.batch_probabilities(slices, tta=True), 1, dims=(-2, -1))
    assert with_tta.shape == expected.shape == (2, 4, *turned.shape[-2:])
    torch.testing.assert_close(with_tta, expected, atol=1e-4, rtol=1e-4)
    single = torch.rot90(seg.batch_probabilities(slices, tta=False), 1, dims=(-2, -1))
    assert (seg.batch_probabilities(turned, tta=False) - single).abs().max() > 1e-2  # the network alone is not
    assert torch.allclose(with_tta.sum(1), torch.ones(()), atol=1e-5)  # still probabilities


def test_tta_defaults_to_on_with_a_gpu_only(default_segmenter, case):
    """`tta=None` resolves by device: the four views cost milliseconds on a GPU, 4x the CPU budget."""
    import torch

    from medsegrwkv.inference.device import resolve_tta

    assert resolve_tta(None, torch.device("cuda")) and not resolve_tta(None, torch.device("cpu"))
    assert resolve_tta(True, torch.device("cpu")) and not resolve_tta(False, torch.device("cuda"))
    image, _ = case
    assert default_segmenter.device.type == "cpu"  # the CPU path: the default is one pass
    default = sitk.GetArrayFromImage(default_segmenter.segment(image))
    np.testing.assert_array_equal(default, sitk.GetArrayFromImage(default_segmenter.segment(image, tta=False)))
    assert (default != sitk.GetArrayFromImage(default_segmenter.segment(image, tta=True))).any()
