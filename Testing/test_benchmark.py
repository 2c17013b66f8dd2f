"""`medsegrwkv benchmark --quick` on two small models: one run writes JSON and Markdown with every
measurement, ratios to the default model, scaling exponents and the Bi-WKV comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsegrwkv.cli.main import main
from medsegrwkv.nets.complexity import complexity
from medsegrwkv.nets.registry import DEFAULT_MODELS
from medsegrwkv.weights import WeightsStatus, weights_status


def test_quick_benchmark_writes_json_and_markdown(tmp_path: Path, capsys) -> None:
    default = DEFAULT_MODELS["segmentation"]
    other = "vmunet-s" if default != "vmunet-s" else "unet2d"
    assert main(["benchmark", "--quick", "--models", other, "--device", "cpu", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["default_model"] == default and "--quick" in report["command"]
    rows = {r["name"]: r for r in report["models"]}
    assert set(rows) == {default, other}  # the default model is always measured
    for row in rows.values():
        assert "error" not in row, row
        assert row["params"] > 0 and row["gflops"] > 0 and row["study_latency_ms"] > 0
        assert row["study_peak_mib"] is None or row["study_peak_mib"] >= 0
        assert [p["input"] for p in row["sweep"]] == [[32, 32], [64, 64]]
        assert all(p["time_ms"] > 0 for p in row["sweep"])
        assert isinstance(row["time_exponent"], float)
        assert set(row["ratios"]) == {"params", "gflops", "study_latency_ms", "study_peak_mib"}
    assert all(v == 1.0 for v in rows[default]["ratios"].values() if v is not None)
    for name, row in rows.items():  # timed with the weights users run, where the model has them
        bundled = weights_status(name) is WeightsStatus.VERIFIED
        assert row["weights"] == ("bundled" if bundled else "untrained"), row
    assert rows[other]["ratios"]["params"] == rows[other]["params"] / rows[default]["params"]
    biwkv = report["biwkv"]
    assert biwkv["loop_ms"] > 0 and biwkv["biwkv_ms"] > 0 and biwkv["max_abs_difference"] < 1e-4
    refine = report["refine"]
    assert "error" not in refine and refine["median_ms"] > 0 and refine["model"] == DEFAULT_MODELS["refinement"]
    cine = {c["name"]: c for c in report["cine"]}
    assert set(cine) == {default}  # the default (and unet2d when it is measured): a whole cine through segment_study
    for c in cine.values():
        assert "error" not in c, c
        assert (c["phases"], c["slices"], c["size"]) == (3, 2, [64, 64]) and c["cine_ms"] > 0 < c["one_phase_ms"]
        assert c["ratio_to_one_phase"] == pytest.approx(c["cine_ms"] / c["one_phase_ms"])
    (pair,) = report["paired"]  # the other 2D model's study alternating with the default's, in one process
    assert "error" not in pair and pair["models"] == [default, other] and pair["rounds"] == 2
    ratios = [o / b for b, o in zip(pair["samples_ms"][default], pair["samples_ms"][other])]
    assert pair["ratio_median"] == pytest.approx(float(np.median(ratios)))
    assert pair["ratio_min"] <= pair["ratio_median"] <= pair["ratio_max"]
    assert pair["weights"] == {n: rows[n]["weights"] for n in (default, other)}
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "## Study latency, paired with the default" in markdown and f"| {other} |" in markdown
    assert "## Click refinement" in markdown and "## A whole cine, end to end" in markdown
    assert f"**{default}** (default)" in markdown and f"| {other} | 2D |" in markdown
    assert "## 2D resolution sweep" in markdown and "## Bi-WKV operator" in markdown
    assert "medsegrwkv compare" in markdown
    assert markdown in capsys.readouterr().out


def test_benchmark_study_is_the_demo_study() -> None:
    """The timed study is real anatomy (the gates act as on real data), of the requested shape."""
    from medsegrwkv.benchmark.measure import demo_volume

    volume = demo_volume((14, 128, 96))
    assert volume.shape == (14, 128, 96) and volume.dtype == np.float32
    assert abs(float(volume.mean())) < 1e-4 and abs(float(volume.std()) - 1.0) < 1e-3
    assert np.corrcoef(volume[7].ravel(), volume[8].ravel())[0, 1] > 0.5  # neighbouring slices of one heart


def test_unknown_model_fails_before_any_work(tmp_path: Path) -> None:
    assert main(["benchmark", "--quick", "--models", "no-such-net", "--output", str(tmp_path)]) == 2
    assert not (tmp_path / "benchmark.json").exists()


def test_plain_route_is_named_after_the_model(tmp_path: Path) -> None:
    """`NAME:plain` measures a network's plain route beside its fast one; other routes are refused."""
    from medsegrwkv.benchmark.measure import model_and_route

    assert model_and_route("medsegrwkv-t:plain") == ("medsegrwkv-t", "plain")
    assert model_and_route("unet2d") == ("unet2d", "")
    assert main(["benchmark", "--quick", "--models", "medsegrwkv-t:turbo", "--output", str(tmp_path)]) == 2
    assert not (tmp_path / "benchmark.json").exists()


def test_compare_reads_metrics_from_the_manifest_and_times_each_model(tmp_path: Path, capsys) -> None:
    from medsegrwkv.weights import load_manifest

    default = DEFAULT_MODELS["segmentation"]
    validation = load_manifest(default)["metrics"]["validation"]
    output = tmp_path / "table.md"
    assert main(["compare", default, "--output", str(output), "--repeats", "1"]) == 0
    rows = json.loads(output.with_suffix(".json").read_text())
    assert len(rows) == 1 and rows[0]["validation"] == validation
    assert rows[0]["cpu_ms_per_slice"] > 0 and rows[0]["params"] > 0 and rows[0]["threads"] == 1
    table = output.read_text()
    assert f"**{validation['mean_dice']:.4f}**" in table and f"`{default}`" in table
    assert table in capsys.readouterr().out
    if weights_status("unet3d") is WeightsStatus.VERIFIED:  # a 3D row: GFLOPs per sliding-window crop
        assert main(["compare", "unet3d", "--output", str(output), "--repeats", "1"]) == 0
        row = json.loads(output.with_suffix(".json").read_text())[0]
        assert row["gflops"] == pytest.approx(complexity("unet3d")["gflops"]) and row["cpu_ms_per_slice"] > 0
    assert main(["compare", default, "--output", str(tmp_path / "table.txt")]) == 2
    assert main(["compare", "unet2d-refine", "--output", str(output)]) == 2  # an interactive refiner


def test_compare_records_its_table_in_a_weights_folder_and_card(tmp_path: Path) -> None:
    """`compare --record-in W --title T` stores the rows in W's manifest and card (same title: replaced), keeps
    the checksum valid, and refuses half the option pair."""
    import shutil

    from medsegrwkv.weights import load_manifest
    from medsegrwkv.weights.store import weights_dir

    folder = tmp_path / "weights"
    shutil.copytree(weights_dir("unet2d"), folder)
    output = tmp_path / "table.md"
    for _ in range(2):
        assert main(["compare", str(folder), "unet2d", "--output", str(output), "--repeats", "1",
                     "--record-in", str(folder), "--title", "**Matched cycle**"]) == 0
    stored = [c for c in load_manifest(folder)["comparisons"] if c["title"] == "**Matched cycle**"]
    assert len(stored) == 1 and [r["name"] for r in stored[0]["rows"]] == ["unet2d", "unet2d"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert "**Matched cycle**" in card and f"**{stored[0]['rows'][0]['validation']['mean_dice']:.4f}**" in card
    assert weights_status(folder) is WeightsStatus.VERIFIED
    assert main(["compare", str(folder), "--output", str(output), "--record-in", str(folder)]) == 2
    assert main(["compare", str(folder), "--output", str(output), "--record-in", str(tmp_path),
                 "--title", "x"]) == 2


def test_complexity_counts_persist_between_runs_keyed_by_the_network_code(monkeypatch, tmp_path):
    from medsegrwkv.nets import complexity as counting

    monkeypatch.setenv("MEDSEGRWKV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(counting, "_COUNTED", {})
    first = complexity("unet2d")
    stored = json.loads((tmp_path / "complexity.json").read_text())
    assert list(stored) == [f"{counting.networks_digest()}|unet2d|{{}}"] and stored[list(stored)[0]] == first

    monkeypatch.setattr(counting, "_COUNTED", {})  # a new process: the file answers, nothing is built
    monkeypatch.setattr(counting, "create_model", lambda *a, **k: pytest.fail("counted again"))
    assert complexity("unet2d") == first

    monkeypatch.setattr(counting, "_COUNTED", {})  # other network code: the stored count is not used
    monkeypatch.setattr(counting, "networks_digest", lambda: "changed")
    with pytest.raises(pytest.fail.Exception, match="counted again"):
        complexity("unet2d")
    monkeypatch.undo()


def test_complexity_is_counted_once_per_model_and_config(monkeypatch):
    first = complexity("unet2d")
    monkeypatch.setattr("medsegrwkv.nets.complexity.create_model", lambda *a, **k: pytest.fail("counted again"))
    again = complexity("unet2d", {})
    assert again == first and again is not first and again["flops_input"] is not first["flops_input"]
