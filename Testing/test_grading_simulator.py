"""The k-space respiratory-motion simulator and its score rule, on real ACDC slices."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsegrwkv.grading.simulator import (
    SCORE_BOUNDS_MM, MotionParameters, MotionSimulator, score_from_severity, segment_of_lines, severity_band,
)
from medsegrwkv.preprocess import prepare_image

SIM = MotionSimulator()


@pytest.fixture(scope="module")
def slices(acdc: Path) -> list[np.ndarray]:
    """Mid-ventricular slices of three training patients, prepared as the grader sees them."""
    out = []
    for case in ("patient001/patient001_frame01", "patient042/patient042_frame01", "patient075/patient075_frame01"):
        array = prepare_image(sitk.ReadImage(str(acdc / f"{case}.nii.gz"), sitk.sitkFloat32)).array
        out.append(array[array.shape[0] // 2])
    return out


def energy(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


BREATHING = MotionParameters(amplitude_mm=8.0, lost_fraction=1.0, segments=12, breathing_period_s=4.0,
                             breathing_phase=0.3, direction_deg=60.0, ap_ratio=0.3, rotation_deg_per_mm=0.1)


@pytest.mark.parametrize("params", [
    MotionParameters(),  # no amplitude
    MotionParameters(amplitude_mm=15.0, lost_fraction=0.0),  # breath-hold kept, no drift
    replace(BREATHING, amplitude_mm=0.0, ordering="interleaved", pe_axis=1),
])
def test_zero_motion_returns_the_slice(slices, params):
    for s in slices:
        out = SIM.simulate(s, params)
        assert out.shape == s.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, s, atol=1e-5)


def test_a_shift_of_the_whole_acquisition_is_a_shift_not_an_artefact(slices):
    # Every heartbeat displaced by the same 3 pixels along y: the image moves, nothing ghosts,
    # and the rule calls it motion-free.
    s = slices[0]
    shift = MotionParameters(amplitude_mm=3 * 1.5625, lost_fraction=1.0, breathing_period_s=1e9, breathing_phase=0.0,
                             direction_deg=90.0, ap_ratio=0.0, rotation_deg_per_mm=0.0)
    np.testing.assert_allclose(SIM.simulate(s, shift), np.roll(s, 3, axis=0), atol=1e-4)
    assert SIM.severity_mm(shift, s.shape) < 1e-9 and SIM.score(shift, s.shape) == 5


def test_artefact_energy_grows_with_amplitude_and_the_score_falls(slices):
    for s in slices:
        energies = [energy(SIM.simulate(s, replace(BREATHING, amplitude_mm=a)), s)
                    for a in (0.5, 1.0, 2.0, 4.0, 8.0)]  # beyond ~8 mm the ghost energy saturates
        assert all(a < b for a, b in zip(energies, energies[1:])), energies
    scores = [SIM.score(replace(BREATHING, amplitude_mm=a), slices[0].shape) for a in (0.5, 2.0, 4.0, 8.0, 16.0, 24.0)]
    assert scores == sorted(scores, reverse=True) and scores[0] == 5 and scores[-1] == 1, scores


def test_sampled_severity_follows_the_score(slices):
    """Motion drawn for each score: lower scores carry more artefact energy on average."""
    means = {}
    for score in (5, 4, 3, 2, 1):
        values = []
        for seed in range(12):
            s = slices[seed % len(slices)]
            corrupted, params = SIM.sample(s, score, seed)
            assert SIM.score(params, s.shape) == score
            low, high = severity_band(score)
            assert low <= SIM.severity_mm(params, s.shape) < high
            values.append(energy(corrupted, s) / float(np.mean(s.astype(np.float64) ** 2)))
        means[score] = float(np.mean(values))
    assert means[5] < means[4] < means[3] < means[2] < means[1], means


def test_motion_through_the_kspace_centre_is_worse(slices):
    # Linear ky order: the centre is acquired in the middle heartbeats. Losing the last 30 % of the
    # breath-hold corrupts outer lines only; losing the first 60 % covers the centre.
    s = slices[1]
    outer = replace(BREATHING, lost_fraction=0.3, lost_at="end", breathing_period_s=1.5)
    centre = replace(BREATHING, lost_fraction=0.6, lost_at="start", breathing_period_s=1.5)
    assert not SIM.centre_hit(outer, s.shape) and SIM.centre_hit(centre, s.shape)
    assert SIM.severity_mm(centre, s.shape) > 2 * SIM.severity_mm(outer, s.shape)
    assert energy(SIM.simulate(s, centre), s) > 2 * energy(SIM.simulate(s, outer), s)


@pytest.mark.parametrize("pe_axis", [0, 1])
def test_ghosts_lie_along_the_phase_encoding_axis(slices, pe_axis):
    """Ghosts replicate the anatomy along the phase-encoding axis: with air around the slice, the
    difference image has far more energy beside the anatomy along the PE axis than along the
    readout axis, whatever the in-plane direction of the motion."""
    s = np.pad(slices[0], 96)  # anatomy in the middle, air around it
    for direction in (30.0, 120.0):
        params = replace(BREATHING, direction_deg=direction, pe_axis=pe_axis, ordering="interleaved")
        diff = np.abs(SIM.simulate(s, params) - s) ** 2
        rows = np.flatnonzero(s.max(axis=1) > 0.05)
        cols = np.flatnonzero(s.max(axis=0) > 0.05)
        inside_r = np.zeros(s.shape[0], bool)
        inside_r[rows.min():rows.max() + 1] = True
        inside_c = np.zeros(s.shape[1], bool)
        inside_c[cols.min():cols.max() + 1] = True
        beside_along_y = diff[np.ix_(~inside_r, inside_c)].mean()  # same columns, other rows
        beside_along_x = diff[np.ix_(inside_r, ~inside_c)].mean()  # same rows, other columns
        along_pe, along_ro = (beside_along_y, beside_along_x) if pe_axis == 0 else (beside_along_x, beside_along_y)
        assert along_pe > 20 * along_ro, (direction, along_pe, along_ro)


def test_deterministic_for_a_seed(slices):
    s = slices[2]
    a, pa = SIM.sample(s, 2, 1234)
    b, pb = SIM.sample(s, 2, 1234)
    c, _ = SIM.sample(s, 2, 1235)
    assert pa == pb
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("shape", [(97, 131), (64, 33), (255, 256), (1, 40)])
def test_any_slice_size(slices, shape):
    s = np.pad(slices[0], 32)[: shape[0], : shape[1]]
    assert s.shape == shape
    np.testing.assert_allclose(SIM.simulate(s, MotionParameters()), s, atol=1e-5)
    for score in (4, 1):
        out, params = SIM.sample(s, score, 7)
        assert out.shape == shape and np.isfinite(out).all() and out.min() >= 0
        assert SIM.score(params, shape) == score


def test_ky_segments_and_rule_boundaries():
    linear = segment_of_lines(16, 4, "linear")
    ky = np.round(np.fft.fftfreq(16) * 16).astype(int)
    assert set(np.bincount(linear)) == {4}
    assert linear[ky == -8] == 0 and linear[ky == -1] == 1 and linear[ky == 0] == 2 and linear[ky == 7] == 3
    interleaved = segment_of_lines(16, 4, "interleaved")
    assert len(set(interleaved[np.abs(ky) <= 2])) == 4  # every heartbeat samples the centre
    assert [score_from_severity(e) for e in (0.0, *SCORE_BOUNDS_MM, 100.0)] == [5, 4, 3, 2, 1, 1]
    assert severity_band(5)[0] == 0.0 and severity_band(1)[0] == SCORE_BOUNDS_MM[-1]
