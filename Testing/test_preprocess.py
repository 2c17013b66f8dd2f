"""Preprocessing pieces on their own: orientation, resampling, ROI, intensity, the 3D path."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsegrwkv.errors import MedSegError
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.progress import Cancelled
from medsegrwkv.nets import create_model, model_config
from medsegrwkv.preprocess import (
    Roi, from_canonical, normalize_intensity, parse_voxel_roi, resample_inplane, resample_probabilities,
    roi_from_ras_box, to_canonical,
)


def _image(size=(40, 30, 6), spacing=(1.2, 1.3, 8.0)) -> sitk.Image:
    array = np.random.default_rng(0).random(size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def test_identity_images_are_already_canonical():
    image = _image()
    c = to_canonical(image)
    assert c.order == (0, 1, 2) and c.flips == (False, False, False)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(c.image), sitk.GetArrayViewFromImage(image))


@pytest.mark.parametrize("order,flips", [((2, 0, 1), (False, False, False)), ((1, 0, 2), (True, False, True)),
                                         ((0, 2, 1), (False, True, False))])
def test_canonical_layout_does_not_depend_on_storage(order, flips):
    image = _image()
    stored = sitk.Flip(sitk.PermuteAxes(image, list(order)), list(flips))
    c = to_canonical(stored)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(c.image), sitk.GetArrayViewFromImage(image))
    back = from_canonical(c.image, c, stored)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(stored))
    assert back.GetOrigin() == stored.GetOrigin() and back.GetDirection() == stored.GetDirection()


def test_inplane_resampling_there_and_back_keeps_a_disc():
    image = sitk.Image(120, 100, 3, sitk.sitkFloat32)
    image.SetSpacing((1.1, 1.1, 10.0))
    yy, xx = np.mgrid[:100, :120]
    disc = ((yy - 50) ** 2 + (xx - 60) ** 2 < 25 ** 2).astype(np.float32)
    image = sitk.GetImageFromArray(np.repeat(disc[None], 3, axis=0))
    image.SetSpacing((1.1, 1.1, 10.0))
    coarse = resample_inplane(image, (1.5625, 1.5625))
    assert coarse.GetSpacing()[:2] == (1.5625, 1.5625) and coarse.GetSize()[2] == 3
    assert abs(coarse.GetSize()[0] * 1.5625 - 120 * 1.1) < 1.6  # same field of view
    probs = np.stack([1 - sitk.GetArrayFromImage(coarse), sitk.GetArrayFromImage(coarse)])
    back = resample_probabilities(probs, coarse, image).argmax(0)
    dice = 2 * (back * disc).sum() / (back.sum() + 3 * disc.sum())
    assert back.shape == (3, 100, 120) and dice > 0.98


def test_roi_parsing_clipping_and_ras_box():
    assert parse_voxel_roi("1,2,3,4,5,6") == Roi((1, 2, 3), (4, 5, 6))
    assert Roi((-5, 0, 0), (10, 500, 3)).clipped((40, 30, 6)) == Roi((0, 0, 0), (10, 30, 3))
    for bad, problem in ((Roi((5, 0, 0), (5, 10, 3)), "is empty"), (Roi((50, 0, 0), (60, 10, 3)), "lies outside")):
        with pytest.raises(MedSegError, match=problem):
            bad.clipped((40, 30, 6))
    image = _image()
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # in-plane rotated 90 degrees
    image.SetOrigin((10.0, -20.0, 5.0))
    lps = [image.TransformIndexToPhysicalPoint(idx) for idx in ((3, 4, 1), (12, 20, 4))]
    ras = [(-x, -y, z) for x, y, z in lps]
    lo, hi = np.minimum(*ras), np.maximum(*ras)
    assert roi_from_ras_box(image, tuple(lo), tuple(hi)) == Roi((3, 4, 1), (13, 21, 5))


def test_intensity_normalisation_is_robust():
    x = np.concatenate([np.linspace(0, 100, 1000), [1e6]]).astype(np.float32)  # one hot outlier
    y = normalize_intensity(x)
    assert y.min() == 0.0 and y.max() == 1.0 and np.median(y) == pytest.approx(0.5, abs=0.02)
    assert not normalize_intensity(np.full(10, 7.0)).any()  # constant image -> zeros, not NaN


def test_3d_sliding_window_path_keeps_geometry_reports_progress_and_cancels():
    torch.manual_seed(0)
    model = create_model("unet3d", channels=(4, 8, 16, 32, 64))
    manifest = {"architecture": "unet3d", "config": model_config("unet3d", channels=(4, 8, 16, 32, 64))}
    segmenter = Segmenter(model, manifest, torch.device("cpu"))
    image = _image(size=(200, 180, 20), spacing=(1.4, 1.4, 6.0))
    events = []
    labels = segmenter.segment(image, progress=lambda f, m: events.append(f))
    assert labels.GetSize() == image.GetSize() and labels.GetSpacing() == image.GetSpacing()
    assert len(events) > 2 and events == sorted(events)
    with pytest.raises(Cancelled, match="cancelled"):
        segmenter.segment(image, cancel=lambda: len(events) > 3)


def test_phases_in_one_batch_stream_match_phase_by_phase(acdc):
    """segment_phases feeds a 2D network the slices of several phases together; each phase's labels
    equal those of segmenting it alone, on a real ED/ES pair stored with permuted axes and an ROI."""
    segmenter = Segmenter.from_pretrained("unet2d", "cpu")
    frames = [sitk.ReadImage(str(acdc / "patient012" / f"patient012_frame{f:02d}.nii.gz"), sitk.sitkFloat32)
              for f in (1, 13)]
    frames = [sitk.PermuteAxes(frame, [2, 0, 1]) for frame in frames]  # slices on i: canonical z is not k
    roi = Roi((0, 20, 20), (frames[0].GetSize()[0], 200, 200))
    events: list[tuple[float, str]] = []
    together = segmenter.segment_phases(frames, roi=roi, phase_names=[3, 7],
                                        progress=lambda f, m: events.append((f, m)))
    alone = [segmenter.segment(frame, roi=roi) for frame in frames]
    for a, b in zip(together, alone):
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        inside = np.zeros(sitk.GetArrayFromImage(a).shape, dtype=bool)
        inside[20:200, 20:200, :] = True  # (k, j, i): the ROI spans j and k 20-200 and every i
        assert sitk.GetArrayFromImage(a)[inside].any() and not sitk.GetArrayFromImage(a)[~inside].any()
    assert events[-1][0] == pytest.approx(1.0) and [f for f, _ in events] == sorted(f for f, _ in events)
    assert all(m.startswith("phase 3-7: ") for _, m in events)


def test_cpu_batches_side_by_side_match_batches_in_turn(acdc):
    """With several CPU threads the slice batches run side by side, one thread each: the same
    probabilities as one thread taking them in turn, progress in slice order, and a cancel stops it."""
    segmenter = Segmenter.from_pretrained("medsegrwkv-t", "cpu")
    image = sitk.ReadImage(str(acdc / "patient013" / "patient013_frame01.nii.gz"), sitk.sitkFloat32)
    from medsegrwkv.preprocess import prepare_image

    volume = prepare_image(image, segmenter.manifest.get("preprocessing")).array
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        in_turn = segmenter.predict_probabilities(volume)
        assert segmenter._pool is None
        torch.set_num_threads(3)
        events: list[float] = []
        side_by_side = segmenter.predict_probabilities(volume, progress=lambda f, m: events.append(f))
        assert segmenter._pool_workers == 3 and torch.get_num_threads() == 3  # the caller keeps its threads
        segmenter.predict_probabilities(volume[:2])  # fewer slices than threads: the same pool
        assert segmenter._pool_workers == 3
        with pytest.raises(Cancelled, match="cancelled"):
            segmenter.predict_probabilities(volume, cancel=lambda: True)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(side_by_side, in_turn, atol=1e-5)
    assert len(events) == 3 and events == sorted(events) and events[-1] == pytest.approx(1.0)


def test_training_labels_reach_the_network_grid_by_partial_volume(acdc):
    """A real ACDC frame at 1.22 mm: its labels on the network grid, brought back as inference brings
    predictions back, match the expert's better than nearest-neighbour ones (whose borders are a
    staircase of the source pixels); on a grid that needs no resampling they are the labels, unchanged."""
    from medsegrwkv.preprocess import prepare_image, prepare_labels

    image_path = acdc / "patient085" / "patient085_frame01.nii.gz"
    label_path = acdc / "patient085" / "patient085_frame01_gt.nii.gz"
    prepared = prepare_image(sitk.ReadImage(str(image_path), sitk.sitkFloat32))
    labels = to_canonical(sitk.ReadImage(str(label_path))).image
    expert = sitk.GetArrayFromImage(labels)
    assert not np.allclose(labels.GetSpacing()[:2], prepared.network_grid.GetSpacing()[:2])

    def round_trip_myocardium(on_grid: np.ndarray) -> float:
        image = sitk.GetImageFromArray(on_grid)
        image.CopyInformation(prepared.network_grid)
        masks = np.stack([on_grid == c for c in range(4)]).astype(np.float32)
        back = resample_probabilities(masks, image, labels).argmax(0)
        return 2 * ((back == 2) & (expert == 2)).sum() / ((back == 2).sum() + (expert == 2).sum())

    partial = prepare_labels(sitk.ReadImage(str(label_path)), prepared)
    nearest = sitk.GetArrayFromImage(sitk.Resample(labels, prepared.network_grid, sitk.Transform(),
                                                   sitk.sitkNearestNeighbor, 0.0))
    assert partial.shape == prepared.array.shape and set(np.unique(partial)) == {0, 1, 2, 3}
    assert round_trip_myocardium(partial) > round_trip_myocardium(nearest) + 0.003
    assert round_trip_myocardium(partial) > 0.95  # a thin myocardium at 1.28x the pixel: 0.96

    # already on the network's pixel size: nothing moves
    same = sitk.ReadImage(str(label_path))
    same.SetSpacing((1.5625, 1.5625, same.GetSpacing()[2]))
    image = sitk.ReadImage(str(image_path), sitk.sitkFloat32)
    image.SetSpacing(same.GetSpacing())
    unchanged = prepare_labels(same, prepare_image(image))
    np.testing.assert_array_equal(unchanged, sitk.GetArrayFromImage(to_canonical(same).image))
