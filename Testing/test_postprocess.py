"""Post-processing on real ACDC labelmaps: the basal-RV trim finds the base, spares what experts
drew, removes the atrium the network paints at end-systole, and in a cine goes to the systolic
phases alone; of several RV pieces the one beside the septum stays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsegrwkv.inference.postprocess import (
    RV, basal_order, keep_rv_beside_the_septum, postprocess, systolic_phases, trim_basal_rv,
)
from medsegrwkv.training.acdc import list_cases
from medsegrwkv.training.function_validation import read_info_cfg


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def references(acdc: Path) -> dict[str, np.ndarray]:
    """Every expert labelmap (ACDC stores slice 0 at the base)."""
    return {case.name: _labels(case.label) for case in list_cases(acdc)}


def test_basal_order_finds_the_base_of_every_expert_labelmap_either_way_up(references):
    for name, labels in references.items():
        order = basal_order(labels)
        assert order is not None and order[0] == 0, name
        assert basal_order(labels[::-1]) == order[::-1], name
    assert basal_order(next(iter(references.values()))[:1]) is None  # one slice: no base to find


def test_trim_spares_almost_all_of_the_experts_right_ventricles(references):
    touched = removed = total = 0
    for labels in references.values():
        trimmed = trim_basal_rv(labels)
        assert (trimmed[labels != RV] == labels[labels != RV]).all()  # only RV voxels change,
        assert not trimmed[(labels == RV) & (trimmed != RV)].any()    # and they become background
        lost = int(((labels == RV) & (trimmed != RV)).sum())
        touched += lost > 0
        removed += lost
        total += int((labels == RV).sum())
    assert touched <= 0.08 * len(references)  # 11 of 160 expert basal slices are smaller than the next
    assert removed < 0.015 * total


def test_trim_is_the_same_for_a_stack_stored_apex_first(references):
    labels = references["patient073_frame10"]
    assert (trim_basal_rv(labels[::-1])[::-1] == trim_basal_rv(labels)).all()


def test_the_rv_piece_kept_is_the_one_beside_the_septum(references):
    """On every expert labelmap the RV piece beside the septum is the largest one, so nothing changes
    where the largest-piece rule was right; a piece painted away from the heart, larger than the
    ventricle (as a heart shown 1.6x as large gave; Testing/test_robustness.py), is dropped, where
    the largest-piece rule would have kept it and lost the ventricle."""
    from monai.transforms import KeepLargestConnectedComponent

    largest = KeepLargestConnectedComponent(applied_labels=[RV], is_onehot=False, connectivity=3)
    for name, labels in references.items():
        expected = np.asarray(largest(labels[None])[0])
        assert (keep_rv_beside_the_septum(labels) == expected).all(), name
    labels = references["patient073_frame10"].copy()
    z, y, x = np.nonzero(labels > 0)
    far = np.zeros_like(labels, dtype=bool)  # a block in the image corner farthest from the heart
    ys = slice(0, labels.shape[1] // 3) if y.mean() > labels.shape[1] / 2 else slice(-(labels.shape[1] // 3), None)
    xs = slice(0, labels.shape[2] // 3) if x.mean() > labels.shape[2] / 2 else slice(-(labels.shape[2] // 3), None)
    far[z.min():z.max() + 1, ys, xs] = True
    assert far.sum() > (labels == RV).sum() and not (labels[far] > 0).any()
    painted = np.where(far, RV, labels).astype(np.uint8)
    np.testing.assert_array_equal(postprocess(painted), postprocess(labels))
    assert (np.asarray(largest(painted[None])[0]) == RV).sum() == far.sum()  # the old rule kept the block


def _rv_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    p, r = prediction == RV, reference == RV
    return 2 * float((p & r).sum()) / float(p.sum() + r.sum())


def test_trim_removes_the_atrium_the_network_paints_at_end_systole(acdc, default_segmenter, monkeypatch):
    """Validation ES frames through the deployed pipeline, with the trim its manifest turns on and
    without it."""
    assert default_segmenter.trim_basal_rv
    scores, excess = [], []
    for case in list_cases(acdc, "val"):
        if int(read_info_cfg(case.image.parent / "Info.cfg")["ES"]) != case.frame:
            continue
        image, reference = sitk.ReadImage(str(case.image)), _labels(case.label)
        trimmed = sitk.GetArrayFromImage(default_segmenter.segment(image))
        monkeypatch.setattr(default_segmenter, "trim_basal_rv", False)
        untrimmed = sitk.GetArrayFromImage(default_segmenter.segment(image))
        monkeypatch.undo()
        scores.append((_rv_dice(untrimmed, reference), _rv_dice(trimmed, reference)))
        excess.append([int((a == RV).sum()) - int((reference == RV).sum()) for a in (untrimmed, trimmed)])
    before, after = np.mean(scores, axis=0)
    assert len(scores) == 20
    assert after > before + 0.01  # measured: +1.8 points (0.818 to 0.836)
    # measured: 8 frames up, 2 down (patient094 and 095, whose most basal ES slice is ventricle), 10 untouched
    assert sum(b > a + 1e-9 for a, b in scores) >= 3 * sum(b < a - 1e-9 for a, b in scores)
    assert np.mean(excess, axis=0)[1] < 0.8 * np.mean(excess, axis=0)[0]  # less RV over-counted at ES


def test_bundled_manifests_trim_for_the_2d_networks_alone():
    """Measured per model (docs/medsegrwkv.md): the 2D networks gain, the 3D ones lose."""
    from medsegrwkv.nets.registry import get_spec
    from medsegrwkv.weights import MODELS_DIR
    from medsegrwkv.weights.store import load_manifest

    for folder in sorted(MODELS_DIR.iterdir()):
        manifest = load_manifest(folder)
        if manifest and manifest["task"] == "segmentation":
            trims = manifest.get("postprocessing", {}).get("trim_basal_rv")
            assert trims == (get_spec(manifest["architecture"]).spatial_dims == 2), folder.name


def test_trim_leaves_a_single_slice_and_a_heart_without_rv_alone(references):
    labels = references["patient001_frame01"]
    no_rv = np.where(labels == RV, 0, labels)
    assert (trim_basal_rv(no_rv) == no_rv).all()
    assert (trim_basal_rv(labels[4:5]) == labels[4:5]).all()


def test_systolic_phases_are_those_nearer_end_systole():
    assert systolic_phases([150.0]) == [True]  # a phase alone: trimmed, as validated per volume
    assert systolic_phases([150.0, 60.0]) == [False, True]
    assert systolic_phases([60.0, 150.0]) == [True, False]
    curve = [150.0, 140.0, 110.0, 80.0, 62.0, 60.0, 75.0, 100.0, 130.0, 148.0]
    assert systolic_phases(curve) == [v < 105.0 for v in curve]
    assert systolic_phases([]) == []


def test_a_cine_trims_its_end_systole_and_leaves_its_end_diastole(acdc, default_segmenter, monkeypatch):
    """patient014's ED, segmented alone, loses basal RV to the trim; segmented with its ES as one
    study, the ED keeps it and the ES is trimmed as it is alone."""
    folder = Path(acdc) / "patient014"
    info = read_info_cfg(folder / "Info.cfg")
    ed, es = (sitk.ReadImage(str(folder / f"patient014_frame{int(info[k]):02d}.nii.gz")) for k in ("ED", "ES"))
    together = [sitk.GetArrayFromImage(x) == RV for x in default_segmenter.segment_phases([ed, es])]
    trimmed = [sitk.GetArrayFromImage(default_segmenter.segment(x)) == RV for x in (ed, es)]
    monkeypatch.setattr(default_segmenter, "trim_basal_rv", False)
    untrimmed = [sitk.GetArrayFromImage(default_segmenter.segment(x)) == RV for x in (ed, es)]
    removed = int((untrimmed[0] & ~trimmed[0]).sum())
    assert removed > 500  # measured: 920 voxels of basal RV
    # batches of other sizes may move a few border voxels, never a trimmed slice
    assert int((together[0] ^ untrimmed[0]).sum()) < 0.05 * removed
    assert int((together[1] ^ trimmed[1]).sum()) < 0.05 * removed
    assert together[0].sum() > trimmed[0].sum() + 0.9 * removed
