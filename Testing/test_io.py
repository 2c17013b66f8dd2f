"""medsegrwkv.io on real data: the Sunnybrook cine DICOM series (with expert contours), the
bundled sample case, ACDC NIfTI volumes, and the ways a user's input or output can go wrong."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medsegrwkv.errors import MedSegError
from medsegrwkv.io import (
    SAMPLE_CASE,
    SUPPORTED_SUFFIXES,
    Study,
    read_study,
    read_sunnybrook_contours,
    sample_data_dir,
    select_phases,
    sunnybrook_reference,
    write_image_atomic,
    write_labelmap,
)
from medsegrwkv.io.contours import contour_mask

from conftest import DATA, require

SUNNYBROOK = DATA / "sunnybrook" / "SCD0000101"
CONTOURS = DATA / "sunnybrook" / "SCD0000101_contours"
ACDC = DATA / "acdc" / "patient001"
ED, ES = 18, 7  # contoured phases of SCD0000101 (0-based): t = 19 and t = 8 of 20


@pytest.fixture(scope="module")
def data() -> Path:
    return require(DATA)


@pytest.fixture(scope="module")
def cine(data: Path) -> Study:
    return read_study(SUNNYBROOK)


@pytest.fixture(scope="module")
def sample() -> Study:
    return read_study(sample_data_dir() / SAMPLE_CASE / "dicom")


def dicom_header(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def expect_error(match: str, path: Path, **kwargs: object) -> MedSegError:
    with pytest.raises(MedSegError, match=match) as info:
        read_study(path, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    return info.value


# --- DICOM cine ---------------------------------------------------------------------------------

def test_cine_series_is_split_into_phases_with_dicom_geometry(cine: Study) -> None:
    assert len(cine.phases) == 20 and cine.description.startswith("DICOM cine")
    assert all(phase.GetSize() == (256, 256, 12) for phase in cine.phases)

    headers = {f: dicom_header(f) for f in SUNNYBROOK.glob("*.dcm")}
    orientation = np.array(next(iter(headers.values())).ImageOrientationPatient, dtype=float)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    position = {f: tuple(np.round(np.array(h.ImagePositionPatient, dtype=float), 3)) for f, h in headers.items()}
    positions = sorted(set(position.values()), key=lambda p: np.dot(p, normal))
    assert len(positions) == 12
    distance = np.mean(np.linalg.norm(np.diff(np.array(positions), axis=0), axis=1))
    for phase in cine.phases:
        np.testing.assert_allclose(phase.GetSpacing(), (1.367188, 1.367188, distance), rtol=1e-5)
        direction = np.array(phase.GetDirection()).reshape(3, 3)
        np.testing.assert_allclose(direction[:, 0], row, atol=1e-5)
        np.testing.assert_allclose(direction[:, 1], col, atol=1e-5)
        np.testing.assert_allclose(direction[:, 2], normal, atol=1e-3)
        np.testing.assert_allclose(phase.GetOrigin(), positions[0], atol=1e-3)

    assert cine.trigger_times is not None and len(cine.trigger_times) == 20
    assert np.all(np.diff(cine.trigger_times) > 0)
    assert cine.files is not None
    times = np.array([[float(headers[f].TriggerTime) for f in files] for files in cine.files])
    assert np.all(np.diff(times, axis=0) > 0)  # at every slice position, phases are in time order
    np.testing.assert_allclose(times.mean(axis=1), cine.trigger_times)
    for files in cine.files:  # slice k of every phase is the k-th position along the normal
        assert [position[f] for f in files] == positions
    for p, k in [(0, 0), (ED, 5), (19, 11)]:  # voxels are the DICOM pixels, not flipped or transposed
        np.testing.assert_array_equal(array(cine.phases[p])[k], dicom_header(cine.files[p][k]).pixel_array)


def test_bundled_sample_holds_es_then_ed_of_the_series(cine: Study, sample: Study) -> None:
    assert len(sample.phases) == 2
    assert sample.files is not None and cine.files is not None
    assert [f.name for f in sample.files[0]] == [f.name for f in cine.files[ES]]
    assert [f.name for f in sample.files[1]] == [f.name for f in cine.files[ED]]
    assert sample.trigger_times is not None and sample.trigger_times[0] < sample.trigger_times[1]
    for s, c in [(0, ES), (1, ED)]:
        assert_same_geometry(sample.phases[s], cine.phases[c])
        np.testing.assert_array_equal(array(sample.phases[s]), array(cine.phases[c]))


def test_sample_without_shared_data_reads_two_phases(sample: Study) -> None:
    assert len(sample.phases) == 2 and sample.description == "DICOM cine series 300 (12 slices x 2 phases)"
    assert all(phase.GetSize() == (256, 256, 12) for phase in sample.phases)


def test_contours_rasterise_to_a_plausible_lv(sample: Study) -> None:
    case = sample_data_dir() / SAMPLE_CASE
    references = sunnybrook_reference(sample, case / "contours", case / "dicom")
    assert sorted(references) == [0, 1]
    es, ed = references[0], references[1]
    assert ed.labels == (2, 3) and es.labels == (3,)  # ES has endocardium contours only
    assert ed.slices == es.slices == list(range(1, 10))

    contours = read_sunnybrook_contours(case / "contours", case / "dicom")
    assert len(contours) == 27 and {c.kind for c in contours} == {"i", "o"}
    by_image = {(c.image_number, c.kind): contour_mask(c.points, (256, 256)) for c in contours}
    for (number, kind), epi in by_image.items():
        if kind == "o":
            endo = by_image[(number, "i")]
            assert (endo & ~epi).sum() <= 2 and endo.sum() < 0.8 * epi.sum()  # the experts' lines may touch

    image = array(sample.phases[1]).astype(float)
    labels = array(ed.labelmap)
    assert_same_geometry(ed.labelmap, sample.phases[1])
    cavity, myocardium = labels == 3, labels == 2
    padded = np.pad(cavity, ((0, 0), (1, 1), (1, 1)))
    touching = padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]
    # the cavity is enclosed by myocardium, except where the experts' two lines touch
    assert np.count_nonzero(touching & (labels == 0)) < 0.02 * np.count_nonzero(touching & ~cavity)
    assert image[cavity].mean() > 1.5 * image[myocardium].mean()  # bright blood pool, darker muscle
    assert image[cavity].mean() > 3 * image[ed.slices].mean()

    voxel_ml = float(np.prod(ed.labelmap.GetSpacing())) / 1000
    ed_ml, es_ml = cavity.sum() * voxel_ml, (array(es.labelmap) == 3).sum() * voxel_ml
    assert 100 < ed_ml < 300 and 50 < es_ml < ed_ml  # a dilated (heart-failure) LV, ED > ES
    for k in ed.slices:
        assert 100 < cavity[k].sum() < 2500


def edge_offset(contours: list, kind: str, index_points) -> np.ndarray:
    """(tx, ty, radial) in pixels: where the image's steepest edge lies along each contour's outward
    normals, fitted as one translation plus one radial offset over all contours of `kind`."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    rows, offsets, steps = [], [], np.arange(-4.0, 4.01, 0.1)
    for contour in (c for c in contours if c.kind == kind):
        image = gaussian_filter(sitk.GetArrayFromImage(sitk.ReadImage(str(contour.dicom_file)))[0].astype(float), 0.8)
        points = index_points(contour)
        tangent = np.roll(points, -1, axis=0) - np.roll(points, 1, axis=0)
        normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1) / (np.linalg.norm(tangent, axis=1)[:, None] + 1e-9)
        normal *= np.sign(np.mean(np.sum((points - points.mean(0)) * normal, axis=1)))  # outward
        for point, n in zip(points[::2], normal[::2]):
            line = point + steps[:, None] * n
            slope = np.gradient(map_coordinates(image, [line[:, 1], line[:, 0]], order=1))
            # endocardium: bright blood to darker muscle outward; epicardium: the strongest edge either way
            edge = int(np.argmin(slope)) if kind == "i" else int(np.argmax(np.abs(slope)))
            if 0 < edge < len(steps) - 1 and abs(slope[edge]) >= 0.5 * np.abs(slope).max():
                rows.append([n[0], n[1], 1.0])
                offsets.append(steps[edge])
    assert len(rows) > 500
    return np.linalg.lstsq(np.array(rows), np.array(offsets), rcond=None)[0]


def test_contour_coordinates_move_the_experts_lines_onto_the_image_edges() -> None:
    """The files' coordinate convention (pixel corners at integers), checked on the image itself: read
    as pixel centres, the expert's lines sit up and left of the intensity edges, for both contours;
    read through `index_points` they sit closer to the edges in x and in y."""
    case = sample_data_dir() / SAMPLE_CASE
    contours = read_sunnybrook_contours(case / "contours", case / "dicom")
    for kind in "io":
        centres = edge_offset(contours, kind, lambda c: c.points)[:2]
        corners = edge_offset(contours, kind, lambda c: c.index_points)[:2]
        assert (centres < -0.3).all(), (kind, centres)
        assert (np.abs(corners) < np.abs(centres) - 0.1).all(), (kind, centres, corners)


def test_reference_of_full_series_lands_on_the_same_phases(cine: Study, sample: Study) -> None:
    full = sunnybrook_reference(cine, CONTOURS, SUNNYBROOK)
    case = sample_data_dir() / SAMPLE_CASE
    small = sunnybrook_reference(sample, case / "contours", case / "dicom")
    assert sorted(full) == [ES, ED]
    for s, c in [(0, ES), (1, ED)]:
        assert full[c].slices == small[s].slices
        np.testing.assert_array_equal(array(full[c].labelmap), array(small[s].labelmap))


def dicom_copy(tmp_path: Path, numbers: list[int], name: str = "dicom") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for n in numbers:
        shutil.copy(SUNNYBROOK / f"{n}.dcm", folder / f"{n}.dcm")
    return folder


def test_two_series_must_be_chosen(data: Path, tmp_path: Path) -> None:
    folder = dicom_copy(tmp_path, [1, 2, 21, 22, 41, 42, 3, 4, 23, 24, 43, 44])
    (folder / "notes.txt").write_text("not DICOM")
    second_uid = "1.2.826.0.1.3680043.8.498.12345"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the original UIDs break a VR rule pydicom warns about
        first_uid = str(dicom_header(folder / "1.dcm").SeriesInstanceUID)
        for n in [3, 4, 23, 24, 43, 44]:
            ds = dicom_header(folder / f"{n}.dcm")
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = second_uid, 301, "COPY"
            ds.save_as(folder / f"{n}.dcm")

    error = expect_error("holds 2 DICOM series", folder)
    for fragment in ["--series", "series 300 (6 files", first_uid, "series 301 'COPY' (6 files", second_uid]:
        assert fragment in str(error)
    choices = [("301", {3, 23, 43}), (second_uid, {3, 23, 43}), ("300", {1, 21, 41}), (first_uid, {1, 21, 41})]
    for choice, files in choices:
        study = read_study(folder, series=choice)
        assert len(study.phases) == 2 and study.phases[0].GetSize() == (256, 256, 3)
        assert study.files is not None and {int(f.stem) for f in study.files[0]} == files
    expect_error("No DICOM series .* matches '302'", folder, series="302")
    expect_error("holds more than one slice position", folder, series="300,301")


def split_a_slice_per_series(folder: Path) -> list[str]:
    """Rewrite a one-series cine as scanners store slice-by-slice breath-holds: a series per slice
    position (numbers 100, 101, ... from base to apex in file order). Returns the series numbers."""
    files = sorted(folder.glob("*.dcm"), key=lambda f: int(f.stem))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        headers = {f: dicom_header(f) for f in files}
        place = {f: tuple(np.round(np.array(ds.ImagePositionPatient, float), 3)) for f, ds in headers.items()}
        positions = list(dict.fromkeys(place.values()))
        for f, ds in headers.items():
            k = positions.index(place[f])
            ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.{500 + k}"
            ds.SeriesNumber, ds.SeriesDescription = 100 + k, f"SAX {k + 1}"
            ds.save_as(f)
    return [str(100 + k) for k in range(len(positions))]


def test_a_stack_stored_a_slice_per_series_reads_as_one(cine: Study, tmp_path: Path) -> None:
    folder = dicom_copy(tmp_path, list(range(1, 241)))
    numbers = split_a_slice_per_series(folder)
    assert len(numbers) == 12

    def assert_same_cine(study: Study) -> None:
        assert len(study.phases) == 20 and "a slice each" in study.description
        for phase, original in zip(study.phases, cine.phases):
            assert_same_geometry(phase, original)
            np.testing.assert_array_equal(array(phase), array(original))
        np.testing.assert_allclose(study.trigger_times, cine.trigger_times)

    assert_same_cine(read_study(folder))  # the folder is one stack: read without asking
    # beside a localizer (another plane), the stack is named in the question and read when given
    localizer = folder / "localizer.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dicom_header(folder / "1.dcm")
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = "1.2.826.0.1.3680043.8.498.499", 99, "LOC"
        ds.SOPInstanceUID, ds.ImageOrientationPatient = "1.2.826.0.1.3680043.8.498.4991", [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [float(v) + 40.0 for v in ds.ImagePositionPatient]
        ds.save_as(localizer)
    error = expect_error("holds 13 DICOM series", folder)
    assert f"Series {', '.join(numbers)} hold a slice each" in str(error) and f"--series {','.join(numbers)}." in str(error)
    assert_same_cine(read_study(folder, series=",".join(numbers)))
    part = read_study(folder, series=",".join(numbers[2:7]))  # a sub-stack is the user's to choose
    assert part.phases[0].GetSize() == (256, 256, 5)
    expect_error("names series 100 twice", folder, series="100,101,100")
    expect_error("mixes image orientations", folder, series="99,100")


def test_bad_dicom_folders(data: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error("contains no DICOM images", empty)
    (empty / "readme.txt").write_text("hello")
    shutil.copy(ACDC / "patient001_frame01.nii.gz", empty)
    expect_error("contains no DICOM images", empty)

    expect_error("single DICOM image", SUNNYBROOK / "1.dcm")
    one_position = dicom_copy(tmp_path, list(range(1, 21)), "one")
    expect_error("single slice position, so it is a 2D image", one_position)
    expect_error("different numbers of images", dicom_copy(tmp_path, [1, 2, 21, 22, 41], "ragged"))
    damaged = dicom_copy(tmp_path, [1, 21, 41], "damaged")
    (damaged / "21.dcm").write_bytes((SUNNYBROOK / "21.dcm").read_bytes()[:-40000])
    expect_error("Cannot read the DICOM image .*21.dcm of DICOM series 300", damaged)
    with pytest.raises(MedSegError, match="only applies to DICOM folders"):
        read_study(ACDC / "patient001_frame01.nii.gz", series="300")


# --- enhanced (multi-frame) DICOM -------------------------------------------------------------------

def enhanced_export(sample_dir: Path) -> pydicom.Dataset:
    """The bundled sample series as one Legacy Converted Enhanced MR file, made by highdicom (the
    conversion a PACS or a Philips/Siemens export performs). The anonymised sample has dates such
    as '20120000' and a frame-of-reference UID per file, which the converter rightly refuses; they
    are set to what one real series has before converting."""
    import highdicom
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    sources = [dicom_header(f) for f in sorted(sample_dir.glob("*.dcm"))]
    for ds in sources:
        for element in ds:
            if element.VR == "DA" and element.value:
                element.value = "20090101"
        ds.FrameOfReferenceUID = sources[0].FrameOfReferenceUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LegacyConvertedEnhancedMRImage(sources, highdicom.UID(), 900, highdicom.UID(), 1)


def as_enhanced_mr(converted: pydicom.Dataset, order: list[int], slope: float, intercept: float) -> pydicom.Dataset:
    """The converted file laid out as a scanner's Enhanced MR export: frames in `order`, the trigger
    time only in each frame's cardiac synchronisation group, a rescaling in the shared groups."""
    ds = copy.deepcopy(converted)
    frames = [ds.PerFrameFunctionalGroupsSequence[i] for i in order]
    for item in frames:
        unassigned = item.UnassignedPerFrameConvertedAttributesSequence[0]
        sync = pydicom.Dataset()
        sync.NominalCardiacTriggerDelayTime = float(unassigned.TriggerTime)
        item.CardiacSynchronizationSequence = pydicom.Sequence([sync])
        del item.UnassignedPerFrameConvertedAttributesSequence
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(frames)
    ds.PixelData = converted.pixel_array[order].tobytes()
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    transform.RescaleSlope, transform.RescaleIntercept = slope, intercept
    return ds


def test_enhanced_multiframe_export_reads_like_the_classic_series(sample: Study, tmp_path: Path) -> None:
    converted = enhanced_export(sample_data_dir() / SAMPLE_CASE / "dicom")
    converted.save_as(tmp_path / "enhanced.dcm")
    folder = tmp_path / "export"
    folder.mkdir()
    converted.save_as(folder / "IM_0001")
    for study in (read_study(tmp_path / "enhanced.dcm"), read_study(folder)):
        assert "2 phases" in study.description and len(study.phases) == 2
        np.testing.assert_allclose(study.trigger_times, sample.trigger_times, atol=1e-6)
        for enhanced, classic in zip(study.phases, sample.phases):
            assert_same_geometry(enhanced, classic)
            assert (array(enhanced) == array(classic)).all()

    order = list(np.random.default_rng(3).permutation(int(converted.NumberOfFrames)))
    scanner = as_enhanced_mr(converted, order, slope=2.0, intercept=-5.0)
    scanner.save_as(tmp_path / "scanner.dcm")
    study = read_study(tmp_path / "scanner.dcm")
    np.testing.assert_allclose(study.trigger_times, sample.trigger_times, atol=1e-6)
    for enhanced, classic in zip(study.phases, sample.phases):
        assert_same_geometry(enhanced, classic)
        np.testing.assert_allclose(array(enhanced), 2.0 * array(classic) - 5.0)


def test_bad_enhanced_files_are_one_sentence(sample: Study, tmp_path: Path) -> None:
    converted = enhanced_export(sample_data_dir() / SAMPLE_CASE / "dicom")
    unplaced = copy.deepcopy(converted)
    del unplaced.PerFrameFunctionalGroupsSequence[5].PlanePositionSequence
    unplaced.save_as(tmp_path / "unplaced.dcm")
    expect_error("frame 6 of the DICOM file .*unplaced.dcm has no image position", tmp_path / "unplaced.dcm")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    converted.save_as(mixed / "enhanced.dcm")
    shutil.copy(next((sample_data_dir() / SAMPLE_CASE / "dicom").glob("*.dcm")), mixed / "classic.dcm")
    classic = dicom_header(mixed / "classic.dcm")
    classic.SeriesInstanceUID = converted.SeriesInstanceUID
    classic.save_as(mixed / "classic.dcm")
    expect_error("mixes multi-frame .enhanced. and single-frame files", mixed)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes((mixed / "enhanced.dcm").read_bytes()[:-50000])
    expect_error("Cannot (read|decode) .*truncated.dcm", truncated)


# --- volume files ---------------------------------------------------------------------------------

def oblique(image: sitk.Image) -> sitk.Image:
    """The image with a non-trivial direction and origin, so geometry bugs cannot hide."""
    image.SetDirection((-0.1045921, -0.73319209, -0.67192995, 0.34638091, -0.66018808, 0.66646228,
                        -0.93224501, -0.16303702, 0.3230142))
    image.SetOrigin((236.585, -37.6925, 108.928))
    return image


def test_4d_nifti_gives_one_3d_phase_per_frame(data: Path, tmp_path: Path) -> None:
    frames = [oblique(sitk.ReadImage(str(ACDC / f"patient001_frame{t}.nii.gz"))) for t in ("01", "12")]
    path = tmp_path / "cine.nii.gz"
    write_image_atomic(sitk.JoinSeries(frames), path)
    study = read_study(path)
    assert len(study.phases) == 2 and study.trigger_times is None and study.files is None
    assert select_phases(study, None) == [0, 1] and select_phases(study, 1) == [1]
    for phase, frame in zip(study.phases, frames):
        assert phase.GetDimension() == 3
        assert_same_geometry(phase, frame)
        np.testing.assert_array_equal(array(phase), array(frame))
    for bad in (2, -1):
        with pytest.raises(MedSegError, match=f"Phase {bad} does not exist"):
            select_phases(study, bad)


@pytest.mark.parametrize("suffix", SUPPORTED_SUFFIXES)
def test_write_labelmap_round_trip(data: Path, tmp_path: Path, suffix: str) -> None:
    labels = [oblique(sitk.ReadImage(str(ACDC / f"patient001_frame{t}_gt.nii.gz"))) for t in ("01", "12")]
    path = tmp_path / f"labels{suffix}"
    write_labelmap(labels, path)
    written = sitk.ReadImage(str(path))
    assert written.GetDimension() == 4 and written.GetPixelID() == sitk.sitkUInt8
    study = read_study(path)
    for phase, label in zip(study.phases, labels):
        assert_same_geometry(phase, label)
        np.testing.assert_array_equal(array(phase), array(label))
    single = tmp_path / f"single{suffix}"
    write_labelmap(labels[1:], single)
    assert sitk.ReadImage(str(single)).GetDimension() == 3
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_failed_write_leaves_nothing_behind(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = sitk.ReadImage(str(ACDC / "patient001_frame01_gt.nii.gz"))
    for path, message in [(tmp_path / "missing" / "out.nii.gz", "does not exist"),
                          (tmp_path / "out.png", "must end in one of"),
                          (tmp_path, "it is a folder")]:
        with pytest.raises(MedSegError, match=message) as info:
            write_image_atomic(image, path)
        assert info.value.code == "output_not_writable" and str(info.value).startswith(f"Cannot write {path}")
    assert os.listdir(tmp_path) == []

    def refused(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:  # what a read-only folder does, also when tests run as root
        patch.setattr(tempfile, "mkdtemp", refused)
        with pytest.raises(MedSegError, match="Cannot write .*out.nrrd: permission denied[.]$"):
            write_image_atomic(image, tmp_path / "out.nrrd")
    assert os.listdir(tmp_path) == []

    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"the user's earlier result")

    def half_written(image: sitk.Image, name: str, useCompression: bool = False) -> None:
        Path(name).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", half_written)
    with pytest.raises(MedSegError, match="Cannot write .*out.nii.gz: the image writer failed"):
        write_labelmap([image], target)
    assert os.listdir(tmp_path) == ["out.nii.gz"] and target.read_bytes() == b"the user's earlier result"


def test_unwritable_folder(data: Path, tmp_path: Path) -> None:
    """A folder that refuses new files. Root (as in CI) writes through chmod, but not into sysfs."""
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    folder = Path("/sys/kernel") if root else tmp_path / "locked"
    if not root:
        folder.mkdir()
        folder.chmod(0o500)
    before = set(os.listdir(folder))
    try:
        with pytest.raises(MedSegError, match="Cannot write .*(permission denied|operation not permitted)") as info:
            image = sitk.ReadImage(str(ACDC / "patient001_frame01_gt.nii.gz"))
            write_image_atomic(image, folder / "out.nrrd")
        assert info.value.code == "output_not_writable" and set(os.listdir(folder)) == before
    finally:
        if not root:
            folder.chmod(0o700)


def test_bad_volume_files(data: Path, tmp_path: Path) -> None:
    expect_error("does not exist", tmp_path / "nothing.nii.gz")

    raw = (ACDC / "patient001_frame01.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    expect_error("Cannot read .*truncated.nii.gz", tmp_path / "truncated.nii.gz")
    (tmp_path / "garbage.nrrd").write_bytes(raw[:1000])
    expect_error("Cannot read .*garbage.nrrd", tmp_path / "garbage.nrrd")

    volume = sitk.ReadImage(str(ACDC / "patient001_frame01.nii.gz"))
    sitk.WriteImage(volume[:, :, 4], str(tmp_path / "slice.nii.gz"))
    expect_error("slice.nii.gz is a 2D image; a short-axis stack", tmp_path / "slice.nii.gz")
    sitk.WriteImage(volume[:, :, 4:5], str(tmp_path / "one_slice.nii.gz"))  # a single-slice stack is valid
    assert len(read_study(tmp_path / "one_slice.nii.gz").phases) == 1

    values = sitk.GetArrayFromImage(volume).astype(np.float32)
    values[3, 100, 100:103] = np.nan
    values[5, 50, 50] = np.inf
    with_nan = sitk.GetImageFromArray(values)
    with_nan.CopyInformation(volume)
    sitk.WriteImage(with_nan, str(tmp_path / "nan.nrrd"))
    expect_error("contains 4 voxels that are NaN or infinite", tmp_path / "nan.nrrd")

    sitk.WriteImage(sitk.Compose(volume, volume, volume), str(tmp_path / "rgb.mha"))
    expect_error("has 3 values per voxel", tmp_path / "rgb.mha")

    (tmp_path / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    expect_error("not a supported file type", tmp_path / "picture.png")


def test_bad_contour_files(data: Path, tmp_path: Path, sample: Study) -> None:
    folder = tmp_path / "contours"
    folder.mkdir()
    with pytest.raises(MedSegError, match="contains no Sunnybrook contour files"):
        read_sunnybrook_contours(folder, SUNNYBROOK)
    (folder / "IM-0001-0059-icontour-manual.txt").write_text("120.5 137.5\nnot numbers\n")
    with pytest.raises(MedSegError, match="is not a valid contour file"):
        read_sunnybrook_contours(folder, SUNNYBROOK)
    contour = CONTOURS / "i-contours" / "IM-0001-0048-icontour-manual.txt"
    shutil.copy(contour, folder / "IM-0001-0047-icontour-manual.txt")
    (folder / "IM-0001-0059-icontour-manual.txt").unlink()
    with pytest.raises(MedSegError, match="47.dcm is not part of the study"):
        sunnybrook_reference(sample, folder, SUNNYBROOK)


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
def test_written_files_get_ordinary_permissions(data: Path, tmp_path: Path) -> None:
    """Weights and labelmaps are readable by whoever may read the user's other files: safetensors
    writes its files 0600, and a file written beside its target and renamed in keeps the mode it was
    created with, so a site's retrained weights would be unreadable by another user's Slicer. A
    replaced file keeps the permissions the user gave it."""
    from medsegrwkv.weights.store import load_model, save_weights

    umask = os.umask(0o022)
    os.umask(umask)
    ordinary = 0o666 & ~umask
    save_weights(*load_model("unet2d", "cpu"), tmp_path / "weights")
    for name in ("model.safetensors", "manifest.json"):
        assert (tmp_path / "weights" / name).stat().st_mode & 0o777 == ordinary, name

    labels = sitk.ReadImage(str(ACDC / "patient001_frame01_gt.nii.gz"))
    out = tmp_path / "labels.nii.gz"
    write_labelmap([labels], out)
    assert out.stat().st_mode & 0o777 == ordinary
    out.chmod(0o640)
    write_labelmap([labels], out)
    assert out.stat().st_mode & 0o777 == 0o640
