"""The bundled Sunnybrook study (no visible ghosting) is graded mild where the heart is small (issue 21)."""

from __future__ import annotations

from medsegrwkv.grading.grade import grade_study


def test_bundled_sunnybrook_apical_slices_are_graded_mild():
    """The bundled study shows no ghosting; its apical slices (indices 0-2: small ventricle, partial
    volume, surface-coil shading) were graded moderate (expected score 2.7-3.2) by the grader trained
    before issue 21, which read anatomy as motion."""
    from medsegrwkv.io import sample_data_dir

    report = grade_study(sample_data_dir() / "SCD0000101" / "dicom", device="cpu", lv_detection=False)
    apical = [p for p in report["positions"] if p["index"] in (0, 1, 2)]
    assert len(apical) == 3
    assert all(p["grade"] == "mild" and p["expected_score"] >= 3.5 for p in apical), \
        [(p["index"], p["expected_score"], p["grade"]) for p in apical]
