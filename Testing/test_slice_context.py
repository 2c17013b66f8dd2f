"""2.5D input: a 2D network that sees each slice between its neighbours (`--set in_channels=3`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.preprocess import neighbour_slices, prepare_image
from medsegrwkv.training.segmentation import with_neighbour_channels
from medsegrwkv.weights import load_model

PATIENT = "patient014/patient014"  # a validation patient (number % 20 == 14)


def _read(acdc: Path, frame: str) -> sitk.Image:
    return sitk.ReadImage(str(acdc / f"{PATIENT}_{frame}.nii.gz"), sitk.sitkFloat32)


def _grown_default(perturb: float) -> Segmenter:
    """The bundled default as a 3-slice network; its neighbour kernels zero, or random when `perturb`."""
    from medsegrwkv.nets.registry import create_model

    plain, manifest = load_model("medsegrwkv-t", "cpu")
    config = {**manifest["config"], "in_channels": 3}
    grown = create_model("medsegrwkv-t", **config)
    grown.load_state_dict(with_neighbour_channels(plain.state_dict(), grown))
    if perturb:
        torch.manual_seed(0)
        first = grown.stem[0][0].weight
        with torch.no_grad():
            first[:, [0, 2]] = perturb * torch.randn_like(first[:, [0, 2]])
    return Segmenter(grown, {**manifest, "config": config}, torch.device("cpu"))


def test_neighbour_slices_stack_each_slice_between_its_neighbours(acdc):
    volume = prepare_image(_read(acdc, "frame01")).array
    stacked = neighbour_slices(volume, 2)
    z = volume.shape[0]
    assert stacked.shape == (z, 5, *volume.shape[1:])
    for k in range(z):
        for c, offset in enumerate(range(-2, 3)):
            np.testing.assert_array_equal(stacked[k, c], volume[min(max(k + offset, 0), z - 1)])
    assert neighbour_slices(volume, 0).shape == (z, 1, *volume.shape[1:])


def test_a_grown_default_segments_exactly_like_the_default(acdc, default_segmenter):
    """Grown to three input slices with zero neighbour kernels, the default must give the same
    probabilities through the whole pipeline: the 2.5D route feeds each slice at the centre."""
    grown = _grown_default(0.0)
    assert grown.context == 1 and default_segmenter.context == 0
    volume = prepare_image(_read(acdc, "frame01")).array
    np.testing.assert_allclose(grown.predict_probabilities(volume), default_segmenter.predict_probabilities(volume),
                               atol=1e-5)


def test_phases_segmented_together_take_neighbours_from_their_own_phase(acdc):
    """Phases share batches end to end; a slice at a phase's end must not see the next phase's first.
    Post-processing is off: a phase alone always gets the basal-RV trim, a cine's diastolic phase not."""
    grown = _grown_default(0.05)
    phases = [_read(acdc, "frame01"), _read(acdc, "frame13")]
    together = grown.segment_phases(phases, postprocessing=False)
    for phase, joint in zip(phases, together):
        alone = sitk.GetArrayFromImage(grown.segment(phase, postprocessing=False))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(joint), alone)
    # and the neighbours do reach the network: the perturbed kernels change some labels
    plain = _grown_default(0.0)
    assert (sitk.GetArrayFromImage(plain.segment(phases[0], postprocessing=False))
            != sitk.GetArrayFromImage(together[0])).any()
