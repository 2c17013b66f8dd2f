"""`medsegrwkv train grade`: a tiny run on real ACDC volumes writes calibrated weights, resumes, refuses
segmentation models; the training samples follow the score they are labelled with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsegrwkv.cli.main import main
from medsegrwkv.errors import MedSegError
from medsegrwkv.grading.dataset import SimulatedMotionSlices, load_acdc_volumes, slice_to_input
from medsegrwkv.grading.grade import Grader
from medsegrwkv.grading.train import GradeTrainConfig, train_grader
from medsegrwkv.training.acdc import list_cases


def test_train_grade_writes_calibrated_weights_and_resumes(tmp_path: Path, acdc: Path, capsys):
    out = tmp_path / "run"
    args = ["train", "grade", "--data", str(acdc), "--output", str(out), "--sunnybrook", "none", "--epochs", "1",
            "--batch-size", "4", "--max-cases", "2", "--max-val-cases", "1", "--max-steps", "2", "--device", "cpu"]
    assert main(args) == 0
    assert '"best_epoch": 1' in capsys.readouterr().out
    manifest = json.loads((out / "weights" / "manifest.json").read_text())
    assert manifest["task"] == "grading" and manifest["architecture"] == "grader_regnetx_002"
    assert manifest["calibration"]["temperature"] > 0
    val = manifest["metrics"]["validation"]
    assert {"accuracy", "kappa", "kappa_linear", "kappa_3level", "recall", "ece", "ece_temperature_scaled"} <= set(val)
    val_slices = len(SimulatedMotionSlices(load_acdc_volumes(list_cases(acdc, "val")[:1], show_progress=False)))
    assert val["samples"] == 2 * val_slices  # every validation slice at two simulated scores
    assert (out / "weights" / "MODEL_CARD.md").read_text().startswith("# Model card: grader_regnetx_002")
    grader = Grader.from_pretrained(str(out / "weights"), "cpu")
    assert grader.temperature == pytest.approx(manifest["calibration"]["temperature"])

    # Resume: a second epoch continues from checkpoint.pt instead of starting again; a longer schedule and a
    # time budget may be given to a resumed run.
    cfg = GradeTrainConfig(output=out, data=acdc, sunnybrook=None, epochs=2, batch_size=4, max_cases=2,
                           max_val_cases=1, max_steps=4, device="cpu", max_minutes=60.0)
    result = train_grader(cfg, show_progress=False)
    history = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and result["steps"] == 4 and history[1]["step"] == 4


def test_train_grade_refuses_a_segmentation_model(tmp_path: Path, acdc: Path):
    with pytest.raises(MedSegError, match="segmentation model"):
        train_grader(GradeTrainConfig(output=tmp_path, data=acdc, model="unet2d", sunnybrook=None))


def test_training_samples_carry_their_score(acdc: Path):
    """The sample labelled 1 differs most from the clean slice, the one labelled 5 least."""
    volumes = load_acdc_volumes(list_cases(acdc, "train")[:1], show_progress=False)
    data = SimulatedMotionSlices(volumes, seed=3, augment=False)
    index = len(data) // 2
    clean = slice_to_input(volumes[0].array[data.items[index][1]])
    errors = {}
    for score in (5, 3, 1):
        x, s = data.make(index, np.random.default_rng([3, score]), score)
        assert s == score and x.shape == (224, 224) and x.dtype == np.float32
        errors[score] = float(np.mean((x - clean) ** 2))
    assert errors[5] < errors[3] < errors[1]
    item = data[index]
    assert item["image"].shape == (1, 224, 224) and int(item["mask"].sum()) == 1


def test_a_grader_on_a_coarser_backbone_grid_keeps_its_field_of_view_and_compares(tmp_path: Path, acdc: Path,
                                                                                    capsys):
    """`--set backbone_size=112` (how the seed study's graders were trained on a CPU): the backbone sees the
    whole 224 x 224 input area-averaged to 112 x 112; the weights reload with that grid, the card reproduces
    it, and `compare` puts the grader beside the default in one table (and refuses to mix tasks)."""
    import torch
    import torch.nn.functional as F

    from medsegrwkv.nets.graders import Downsampled
    from medsegrwkv.nets.registry import DEFAULT_MODELS, create_model

    model = create_model("grader_regnetx_002", backbone_size=112).eval()
    x = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), model.backbone(F.avg_pool2d(x, 2)), atol=1e-5)

    out = tmp_path / "run"
    assert main(["train", "grade", "--data", str(acdc), "--output", str(out), "--sunnybrook", "none", "--epochs", "1",
                 "--batch-size", "4", "--max-cases", "1", "--max-val-cases", "1", "--max-steps", "1",
                 "--device", "cpu", "--set", "backbone_size=112"]) == 0
    weights = out / "weights"
    assert json.loads((weights / "manifest.json").read_text())["config"]["backbone_size"] == 112
    grader = Grader.from_pretrained(str(weights), "cpu")
    assert isinstance(grader.model, Downsampled) and grader.model.size == 112
    assert grader.probabilities(np.zeros((3, 1, 224, 224), np.float32)).shape == (3, 5)
    assert "--set backbone_size=112" in (weights / "MODEL_CARD.md").read_text()

    table = tmp_path / "graders.md"
    capsys.readouterr()
    assert main(["compare", str(weights), DEFAULT_MODELS["grading"], "--output", str(table), "--repeats", "1",
                 "--record-in", str(weights), "--title", "Graders"]) == 0
    rows = json.loads(table.with_suffix(".json").read_text())
    assert [r["task"] for r in rows] == ["grading", "grading"] and rows[0]["config"] == "backbone_size=112"
    assert rows[0]["cpu_ms_per_slice"] > 0 and rows[0]["params"] == rows[1]["params"]  # the wrapper adds none
    text = table.read_text()
    assert "lin. kappa 5" in text and f"**{rows[1]['validation']['kappa_linear']:.3f}**" in text
    assert "Graders" in (weights / "MODEL_CARD.md").read_text()
    assert main(["compare", str(weights), DEFAULT_MODELS["segmentation"], "--output", str(table)]) == 2
    assert "one task at a time" in capsys.readouterr().err
