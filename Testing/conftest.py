"""Shared paths, fixtures and test tiers. The real data lives beside the repository in ../shared/data.

Markers (pytest.ini): `data` for tests that read the shared data (given to every test that uses the
`acdc`, `sunnybrook` or `data` fixture), `gpu` for tests that need CUDA (skipped without it) and
`slow` for the end-to-end tests listed in SLOW, which `make test-quick` leaves out.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
ACDC = DATA / "acdc"
SUNNYBROOK = DATA / "sunnybrook"


# Tests that run the command line, the worker, the Slicer scene, training or whole studies
# (seconds to minutes each on two cores): a module name, or a module and its slow tests.
SLOW: dict[str, set[str] | None] = {
    "test_benchmark": {"test_quick_benchmark_writes_json_and_markdown", "test_unknown_model_fails_before_any_work",
                       "test_compare_reads_metrics_from_the_manifest_and_times_each_model",
                       "test_compare_records_its_table_in_a_weights_folder_and_card"},
    "test_cli": None,
    "test_cohort": {"test_two_ranks_segment_a_real_cohort_resume_and_record_failures",
                    "test_output_that_is_a_file_is_one_sentence"},
    "test_engine": None,
    "test_ensemble": {"test_ensemble_weights_joins_real_networks_and_refuses_what_cannot_be_one"},
    "test_function": {"test_cli_segments_the_bundled_cine_and_reports_its_function"},
    "test_grading_cli": None,
    "test_grading_train": None,
    "test_hostile_input": {
        "test_roi_ras_that_is_not_a_finite_number", "test_worker_refuses_a_non_finite_roi_and_a_folder_output",
        "test_broken_weights_folders_are_one_sentence", "test_worker_survives_a_deeply_nested_request",
        "test_nifti_with_zero_voxel_size_is_refused", "test_float64_values_near_1e300_are_segmented_like_the_original",
        "test_negative_roi_ras_segments", "test_cli_rejects_before_any_work", "test_blank_study_is_not_graded",
        "test_study_without_a_heart_is_not_graded_and_blank_slices_are_named",
        "test_grade_cli_and_module_show_an_ungraded_study", "test_segment_warns_in_cli_and_worker",
        "test_full_disk_segment_is_one_sentence_and_keeps_the_old_labelmap"},
    "test_interactive": {
        "test_refinement_model_is_the_segmenter_with_mask_and_click_channels",
        "test_refine_touches_only_the_clicked_slice_and_does_not_depend_on_the_voxel_layout",
        "test_refine_rejects_bad_clicks_and_segments", "test_clicks_improve_real_validation_slices",
        "test_train_refine_cli_runs_resumes_and_exports", "test_evaluate_clicks_bad_arguments_are_one_sentence"},
    "test_medsegrwkv_net": {"test_mixed_precision_forward_and_backward", "test_overfits_one_real_slice",
                            "test_trained_weights_segment_the_demo_study_through_the_cli"},
    "test_peers": {"test_every_model_trains_one_step", "test_train_and_segment_a_peer_from_the_command_line",
                   "test_untrained_3d_peer_segments_a_real_volume_by_sliding_window",
                   "test_trained_peer_segments_a_validation_volume"},
    "test_heart_size": {"test_a_heart_larger_than_every_training_heart_is_segmented_at_a_trained_size"},
    "test_postprocess": {"test_trim_removes_the_atrium_the_network_paints_at_end_systole"},
    "test_preprocess": {"test_3d_sliding_window_path_keeps_geometry_reports_progress_and_cancels"},
    "test_robustness": None,
    "test_segment": None,
    "test_slice_context": {"test_phases_segmented_together_take_neighbours_from_their_own_phase"},
    "test_slicer_module": None,
    "test_training": None,
}
DATA_FIXTURES = {"acdc", "sunnybrook", "data"}


def data_required() -> bool:
    """In CI a missing data folder fails the run: skipped tests would pass it unchecked."""
    return os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("MEDSEGRWKV_REQUIRE_DATA") == "1"


def require(path: Path) -> Path:
    if not path.exists():
        message = f"{path} is not available (the shared data folder sits beside the repository)"
        if data_required():
            pytest.fail(message + "; CI needs it")
        pytest.skip(message)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = None
    for item in items:
        module, name = item.module.__name__, getattr(item, "originalname", item.name)
        if module in SLOW and (SLOW[module] is None or name in SLOW[module]):
            item.add_marker(pytest.mark.slow)
        if DATA_FIXTURES & set(item.fixturenames) or module == "test_slicer_module":
            item.add_marker(pytest.mark.data)
        if item.get_closest_marker("gpu"):
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def acdc() -> Path:
    return require(ACDC)


@pytest.fixture(scope="session")
def sunnybrook() -> Path:
    return require(SUNNYBROOK)


@pytest.fixture(scope="session")
def default_segmenter():
    """The committed default model on the CPU (tests must not depend on a GPU)."""
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.nets.registry import DEFAULT_MODELS

    return Segmenter.from_pretrained(DEFAULT_MODELS["segmentation"], "cpu")
