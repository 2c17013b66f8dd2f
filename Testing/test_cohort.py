"""`medsegrwkv segment-cohort` (medsegrwkv.cohort): listing, naming, sharding, and a real two-rank
torchrun job on ACDC studies that resumes and records a broken study instead of stopping."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from medsegrwkv.cohort import CohortRank, list_studies, study_ids
from medsegrwkv.errors import MedSegError


def test_list_file_skips_comments_and_resolves_relative_paths(tmp_path):
    (tmp_path / "a").mkdir()
    listing = tmp_path / "a" / "studies.txt"
    listing.write_text("# cohort\n\none.nii.gz\n  /abs/two.nrrd  \nsub/three\n")
    assert list_studies(listing) == [tmp_path / "a" / "one.nii.gz", Path("/abs/two.nrrd"),
                                     tmp_path / "a" / "sub" / "three"]


def test_folder_lists_image_files_and_subfolders_only(tmp_path):
    for name in ("b.nii.gz", "a.nrrd", "notes.txt", ".hidden.nii.gz"):
        (tmp_path / name).write_text("x")
    (tmp_path / "dicom_series").mkdir()
    assert [p.name for p in list_studies(tmp_path)] == ["a.nrrd", "b.nii.gz", "dicom_series"]


def test_folder_lists_enhanced_dicom_files_but_not_single_images(tmp_path):
    """An enhanced (multi-frame) DICOM file is a whole study; a classic one is one image of a series."""
    from medsegrwkv.io import sample_data_dir
    from test_io import enhanced_export

    dicom = sample_data_dir() / "SCD0000101" / "dicom"
    enhanced_export(dicom).save_as(tmp_path / "IM_0001")
    shutil.copy(next(dicom.glob("*.dcm")), tmp_path / "IM_0002")
    assert [p.name for p in list_studies(tmp_path)] == ["IM_0001"]


def test_empty_or_wrong_sources_are_one_sentence(tmp_path):
    with pytest.raises(MedSegError, match="names no study"):
        list_studies(tmp_path)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(MedSegError, match="neither a folder of studies nor a list file"):
        list_studies(tmp_path / "x.json")


def test_study_ids_are_unique_and_safe():
    paths = [Path("/x/p1/frame.nii.gz"), Path("/y/p2/frame.nii.gz"), Path("/z/series 3"), Path("/w/frame.nrrd")]
    assert study_ids(paths) == ["frame", "frame-2", "series_3", "frame-3"]


def test_ranks_share_every_study_exactly_once():
    shares = [CohortRank(rank=r, world_size=3).share(10) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(10))
    assert shares[1] == [1, 4, 7]


def _two_phase_study(acdc: Path, patient: str, out: Path) -> Path:
    """The ED and ES frames of an ACDC patient as one 4D NIfTI (a two-phase cine)."""
    info = dict(line.split(":", 1) for line in (acdc / patient / "Info.cfg").read_text().splitlines() if ":" in line)
    frames = [sitk.ReadImage(str(acdc / patient / f"{patient}_frame{int(info[k]):02d}.nii.gz")) for k in ("ED", "ES")]
    path = out / f"{patient}_cine.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    return path


def _run(listing: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medsegrwkv", "segment-cohort", str(listing), "-o", str(out), "--model", "unet2d",
           "--device", "cpu", "--function"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_ranks_segment_a_real_cohort_resume_and_record_failures(tmp_path, acdc):
    studies = tmp_path / "studies"
    studies.mkdir()
    cine = [_two_phase_study(acdc, p, studies) for p in ("patient001", "patient061")]
    broken = studies / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    listing = tmp_path / "cohort.txt"
    listing.write_text("\n".join([str(cine[0]), str(acdc / "patient021" / "patient021_frame01.nii.gz"),
                                  "studies/broken.nii.gz", str(cine[1])]) + "\n")
    out = tmp_path / "out"

    first = _run(listing, out)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(out / "summary.csv", newline="") as f:
        rows = {row["study"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["patient001_cine", "patient021_frame01", "broken", "patient061_cine"]
    assert {row["rank"] for row in rows.values()} == {"0", "1"}  # the work was shared
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"].endswith(".")
    for name in ("patient001_cine", "patient061_cine"):
        row = rows[name]
        assert row["status"] == "done" and row["phases"] == "2"
        assert (row["ed_phase"], row["es_phase"]) == ("0", "1")  # ED is the larger LV of the two frames
        assert 0 < float(row["lv_esv_ml"]) < float(row["lv_edv_ml"]) and 0 < float(row["lv_ef_percent"]) < 90
        function = json.loads((out / name / "function.json").read_text())
        assert function["lv"]["edv_ml"] == pytest.approx(float(row["lv_edv_ml"]))
        labels = sitk.ReadImage(str(out / name / "labels.nii.gz"))
        assert labels.GetDimension() == 4 and labels.GetSize()[3] == 2
    # patient001 is dilated (DCM, EF about 15-20%); patient061 is a normal heart
    assert float(rows["patient001_cine"]["lv_ef_percent"]) < 35 < float(rows["patient061_cine"]["lv_ef_percent"])
    single = rows["patient021_frame01"]
    assert single["status"] == "done" and single["ed_phase"] == "" and float(single["LV cavity (mL)"]) > 20

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/labels.nii.gz")}
    second = _run(listing, out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("finished before, skipped") == 3  # the broken one is tried again
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/labels.nii.gz")} == stamps


def test_output_that_is_a_file_is_one_sentence(tmp_path, acdc):
    from cli_helpers import assert_user_error, run_cli

    listing = tmp_path / "cohort.txt"
    listing.write_text(str(acdc / "patient001" / "patient001_frame01.nii.gz") + "\n")
    target = tmp_path / "out.csv"
    target.write_text("keep me")
    result = run_cli("segment-cohort", str(listing), "-o", str(target), "--model", "unet2d")
    assert_user_error(result, "is a file")
    assert target.read_text() == "keep me"
