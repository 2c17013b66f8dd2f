"""Training: a tiny run lowers the loss and resumes; two DDP processes stay in sync."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from medsegrwkv.errors import MedSegError
from medsegrwkv.training.acdc import is_validation, list_cases
from medsegrwkv.training.segmentation import TrainConfig, train_segmentation
from medsegrwkv.weights import WeightsStatus, weights_status


def test_split_is_patient_level_and_stratified(acdc):
    train, val = list_cases(acdc, "train"), list_cases(acdc, "val")
    assert len(train) == 120 and len(val) == 40  # 60 / 20 patients, 2 frames each
    assert not {c.patient for c in train} & {c.patient for c in val}
    groups = {}
    for c in val:
        groups.setdefault(c.group, set()).add(c.patient)
    assert {g: len(p) for g, p in groups.items()} == {"DCM": 4, "HCM": 4, "MINF": 4, "NOR": 4, "RV": 4}
    assert all(is_validation(c.number) for c in val)


def test_tiny_training_lowers_the_loss_and_resumes(tmp_path, acdc):
    cfg = TrainConfig(data=acdc, output=tmp_path / "run", epochs=8, max_cases=2, batch_size=4, crop=96,
                      lr=3e-3, warmup_epochs=1, validate=False, device="cpu")
    train_segmentation(cfg, show_progress=False)
    history = [json.loads(l) for l in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert history[-1]["loss"] < 0.75 * history[0]["loss"], [h["loss"] for h in history]
    assert weights_status(tmp_path / "run" / "weights") == WeightsStatus.VERIFIED
    cfg.epochs = 9  # resume: continues from the checkpoint instead of starting over
    result = train_segmentation(cfg, show_progress=False)
    history = [json.loads(l) for l in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, 10))
    assert result["steps"] == history[-1]["step"] > history[-2]["step"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 9
    # another recipe in the same run folder is refused before any work, in one sentence
    for change, words in (({"lr": 1e-3}, "lr=0.003 (now 0.001)"), ({"crop": 64}, "crop=96 (now 64)")):
        with pytest.raises(MedSegError, match=re.escape(words)):
            train_segmentation(dataclasses.replace(cfg, epochs=10, **change), show_progress=False)
    assert len((tmp_path / "run" / "history.jsonl").read_text().splitlines()) == 9


def test_two_ddp_processes_stay_in_sync(tmp_path, acdc):
    data = tmp_path / "acdc"
    for patient in ("patient001", "patient002"):
        shutil.copytree(acdc / patient, data / patient)
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("ddp_worker.py")
    # --standalone: the rendezvous takes a free port, so parallel runs on one machine do not collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(data), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    digests = [(out / f"rank{r}.sha256").read_text().split() for r in (0, 1)]
    assert digests[0][1] == digests[1][1] == "3"  # both ranks took 3 optimiser steps
    assert digests[0][0] == digests[1][0]  # identical parameters after the all-reduced steps
    assert digests[0][0] != digests[0][2]  # and they moved away from the initial weights


def test_config_overrides_reach_the_network_and_the_manifest(tmp_path, acdc):
    from cli_helpers import assert_user_error, run_cli
    from medsegrwkv.weights import load_model

    out = tmp_path / "raster"
    result = run_cli("train", "--model", "medsegrwkv-t", "--set", "scan=raster", "--set", "local_blocks=false",
                     "--data", str(acdc), "--output", str(out), "--epochs", "1", "--max-steps", "1", "--max-cases", "1",
                     "--batch-size", "2", "--crop", "64", "--no-validation", "--device", "cpu",
                     "--augmentation", "mild")
    assert result.returncode == 0, result.stderr
    model, manifest = load_model(out / "weights", "cpu")
    assert manifest["config"]["scan"] == "raster" and manifest["config"]["local_blocks"] is False
    assert manifest["training"]["augmentation"] == "mild"
    smallest, largest = manifest["preprocessing"]["heart_size_mm"]  # of its one training volume
    assert smallest == largest and 40 < smallest < 100
    least, most = manifest["preprocessing"]["noise_sigma"]  # likewise its noise (preprocess.noise)
    assert least == most and 0.002 < least < 0.03
    assert manifest["postprocessing"] == {"trim_basal_rv": True}
    from medsegrwkv.nets.registry import create_model

    plain = create_model("medsegrwkv-t", scan="raster", local_blocks=False)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in create_model("medsegrwkv-t").parameters())
    # the model card gives the size of the network as trained, not of the registered default
    card = (out / "weights" / "MODEL_CARD.md").read_text()
    assert f"({sum(p.numel() for p in plain.parameters()) / 1e6:.2f} M parameters" in card
    assert_user_error(run_cli("train", "--model", "medsegrwkv-t", "--set", "scan=zigzag", "--output",
                              str(tmp_path / "bad")), "scan")
    assert_user_error(run_cli("train", "--set", "depth", "--output", str(tmp_path / "bad")), "KEY=VALUE")
    assert_user_error(run_cli("train", "--augmentation", "strong", "--output", str(tmp_path / "bad")), "augmentation")
    assert_user_error(run_cli("train", "--model", "medsegrwkv-t", "--set", "in_channels=2", "--output",
                              str(tmp_path / "bad")), "odd number")
    assert not (tmp_path / "bad").exists()


def test_deep_supervision_trains_its_coarse_heads_and_exports_loadable_weights(tmp_path, acdc):
    import torch

    from medsegrwkv.nets.registry import create_model
    from medsegrwkv.weights import load_model

    cfg = TrainConfig(data=acdc, output=tmp_path / "ds", model="medsegrwkv-t", overrides={"deep_supervision": True},
                      epochs=1, max_cases=1, batch_size=2, crop=64, lr=1e-2, warmup_epochs=0, max_steps=2,
                      validate=False, device="cpu")
    trained = train_segmentation(cfg, show_progress=False)["model"]
    torch.manual_seed(cfg.seed)  # the run's initial weights
    initial = create_model("medsegrwkv-t", deep_supervision=True)
    for before, after in zip(initial.aux_heads.parameters(), trained.aux_heads.parameters()):
        assert (after - before).abs().max() > 1e-3  # the loss reached every coarse head
    model, manifest = load_model(tmp_path / "ds" / "weights", "cpu")
    assert manifest["config"]["deep_supervision"] is True and len(model.aux_heads) == 3

    # `--init` the bundled plain network: its weights carry over, the coarse heads start fresh
    tuned = train_segmentation(TrainConfig(**{**vars(cfg), "output": tmp_path / "tuned", "init": "medsegrwkv-t",
                                              "lr": 1e-7}), show_progress=False)["model"]
    bundled, _ = load_model("medsegrwkv-t", "cpu")
    tuned_state = tuned.state_dict()
    for name, value in bundled.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(tuned_state[name], value.float(), rtol=1e-2, atol=1e-3, msg=name)
    assert sorted(set(tuned_state) - set(bundled.state_dict())) == [
        f"aux_heads.{i}.{p}" for i in range(3) for p in ("bias", "weight")]


def test_a_25d_run_grows_from_the_bundled_default_and_its_weights_segment(tmp_path, acdc):
    """`--set in_channels=3 --init medsegrwkv-t`: training sees 3-slice inputs, starts from the default
    with zero neighbour kernels, and the exported weights segment with each slice's neighbours."""
    import torch

    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.weights import load_model
    from medsegrwkv.weights.model_card import render_segmentation_card

    cfg = TrainConfig(data=acdc, output=tmp_path / "25d", model="medsegrwkv-t", overrides={"in_channels": 3},
                      init="medsegrwkv-t", epochs=1, max_cases=1, batch_size=2, crop=64, lr=1e-3, warmup_epochs=0,
                      max_steps=2, validate=False, device="cpu")
    trained = train_segmentation(cfg, show_progress=False)["model"]
    bundled, bundled_manifest = load_model("medsegrwkv-t", "cpu")
    first, start = trained.stem[0][0].weight, bundled.stem[0][0].weight
    assert first.shape[1] == 3 and start.shape[1] == 1
    torch.testing.assert_close(first[:, 1], start[:, 0].float(), rtol=0.05, atol=0.02)  # the centre grew on
    assert 0 < first[:, [0, 2]].abs().max() < 0.02  # the neighbours' kernels left zero, a little
    segmenter = Segmenter.from_pretrained(str(tmp_path / "25d" / "weights"), "cpu")
    assert segmenter.context == 1 and segmenter.manifest["config"]["in_channels"] == 3
    # the card tells a reader what the network sees; a single-slice model's card does not say it
    assert "1 neighbouring slice on either side" in (tmp_path / "25d" / "weights" / "MODEL_CARD.md").read_text()
    assert "neighbouring slice" not in render_segmentation_card(bundled_manifest, 3.1e6, 2.5)


def test_training_autocast_is_bfloat16_on_cuda_and_off_on_the_cpu():
    """float16 autocast without loss scaling lets small gradients underflow; the trainers use bfloat16."""
    import torch

    from medsegrwkv.inference.device import training_autocast

    layer = torch.nn.Linear(8, 8)
    with training_autocast(torch.device("cpu")):
        assert layer(torch.randn(2, 8)).dtype == torch.float32
    if torch.cuda.is_available():
        layer = layer.cuda()
        with training_autocast(torch.device("cuda")):
            out = layer(torch.randn(2, 8, device="cuda"))
        assert out.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def test_a_3d_run_records_the_crop_it_trained_on(tmp_path, acdc):
    """3D models train on their registered sliding-window crop, whatever `crop` says; the manifest
    (and so the model card) must name that crop."""
    from medsegrwkv.nets.registry import get_spec
    from medsegrwkv.weights.store import load_manifest

    cfg = TrainConfig(data=acdc, output=tmp_path / "run", model="unet3d", epochs=1, max_cases=1, batch_size=1,
                      max_steps=1, crop=96, validate=False, device="cpu")
    train_segmentation(cfg, show_progress=False)
    manifest = load_manifest(tmp_path / "run" / "weights")
    assert manifest["training"]["crop"] == list(get_spec("unet3d").roi_size) == [16, 160, 160]
    assert manifest["postprocessing"] == {"trim_basal_rv": False}


def test_fine_tuning_starts_from_the_bundled_weights(tmp_path, acdc):
    """`train --init` continues from installed weights: the first loss is already low (a fresh network's
    is not), the weights barely move at a tiny learning rate, and the manifest names what it grew from."""
    import torch

    from cli_helpers import assert_user_error, run_cli
    from medsegrwkv.weights.store import load_manifest, load_model

    common = dict(data=acdc, model="unet2d", epochs=1, max_cases=2, batch_size=4, crop=96, max_steps=2,
                  lr=1e-7, validate=False, device="cpu")
    train_segmentation(TrainConfig(output=tmp_path / "scratch", **common), show_progress=False)
    train_segmentation(TrainConfig(output=tmp_path / "tuned", init="unet2d", **common), show_progress=False)
    first_loss = {name: json.loads((tmp_path / name / "history.jsonl").read_text().splitlines()[0])["loss"]
                  for name in ("scratch", "tuned")}
    assert first_loss["tuned"] < 0.5 * first_loss["scratch"], first_loss

    start, bundled = load_model("unet2d", "cpu")
    tuned, manifest = load_model(tmp_path / "tuned" / "weights", "cpu")
    for (name, a), b in zip(start.state_dict().items(), tuned.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3, msg=name)
    init = manifest["training"]["init"]
    assert init["weights"] == "unet2d" and init["sha256"] == bundled["sha256"]
    assert init["epochs_completed"] == bundled["training"]["epochs_completed"]
    assert "Fine-tuned from `unet2d`" in (tmp_path / "tuned" / "weights" / "MODEL_CARD.md").read_text()
    assert "init" not in load_manifest(tmp_path / "scratch" / "weights")["training"]

    # other architectures or configs are refused before the run folder exists
    for extra in ((), ("--set", "scan=raster")):
        out = tmp_path / f"wrong{len(extra)}"
        assert_user_error(run_cli("train", "--model", "medsegrwkv-t", *extra, "--init",
                                  "unet2d" if not extra else "medsegrwkv-t", "--data", str(acdc),
                                  "--output", str(out), "--device", "cpu"), "--init")
        assert not out.exists()


def test_default_models_card_shows_the_comparison_that_made_it_the_default():
    """The bundled default's card carries its comparison tables (from `medsegrwkv compare` rows in
    its manifest); its own row has the manifest's validation Dice, and in each table it is ahead of
    the UNet baseline it was compared with."""
    from medsegrwkv.benchmark.compare import render_table
    from medsegrwkv.nets.registry import DEFAULT_MODELS
    from medsegrwkv.weights.store import load_manifest, weights_dir

    name = DEFAULT_MODELS["segmentation"]
    manifest = load_manifest(name)
    card = (weights_dir(name) / "MODEL_CARD.md").read_text()
    comparisons = manifest["comparisons"]
    assert comparisons and "## Compared with other models on the same validation split" in card
    for comparison in comparisons:
        assert comparison["title"] in card and render_table(comparison["rows"]) in card

        def best(model: str) -> float:
            return max(r["validation"]["mean_dice"] for r in comparison["rows"] if r["name"] == model)

        assert best(name) > best("unet2d")
    own = manifest["metrics"]["validation"]["mean_dice"]
    assert any(r["name"] == name and r["validation"]["mean_dice"] == own for c in comparisons for r in c["rows"])
    assert own >= 0.88  # the target for medsegrwkv-t, through the deployed pipeline


def test_mild_augmentation_leaves_out_the_simulated_scanners():
    """'mild' (what trained the bundled default) is 'wide' without the other-scanner looks; both
    keep the orientations; 'appearance' has the looks on mild's geometry, 'geometry' mild's looks on
    wide's geometry; a misspelt strength is refused."""
    from medsegrwkv.training.data import augmentation

    def transforms(strength: str) -> list:
        return list(augmentation(2, (64, 64), 0, strength).transforms)

    def names(strength: str) -> set[str]:
        return {type(t).__name__ for t in transforms(strength)}

    def affine_range(strength: str) -> tuple:
        affine = next(t for t in transforms(strength) if type(t).__name__ == "RandAffined").rand_affine.rand_affine_grid
        return affine.rotate_range, affine.scale_range

    scanners = {"RandSimulateLowResolutiond", "RandGibbsNoised", "RandRicianNoised", "RandHistogramShiftd"}
    assert scanners <= names("wide") and not scanners & names("mild")
    assert names("appearance") == names("wide")
    assert affine_range("appearance") == affine_range("mild") != affine_range("wide")
    assert names("geometry") == names("mild") and affine_range("geometry") == affine_range("wide")
    assert {"RandFlipd", "RandRotate90d", "RandAffined"} <= names("mild") & names("wide")
    with pytest.raises(MedSegError, match="augmentation"):
        augmentation(2, (64, 64), 0, "strong")


def test_all_patients_trains_on_the_validation_patients_too(tmp_path, acdc):
    """The final model of a fixed recipe: `--all-patients` takes the validation patient's frames into
    training and validates on nothing; a validated run on the same folder does not train on them."""
    from cli_helpers import assert_user_error, run_cli
    from medsegrwkv.weights import load_model

    data = tmp_path / "acdc"
    data.mkdir()
    for patient in ("patient001", "patient013"):  # a training and a validation patient
        (data / patient).symlink_to(acdc / patient)
    common = ("--data", str(data), "--epochs", "1", "--max-steps", "1", "--batch-size", "2", "--crop", "64",
              "--device", "cpu")
    result = run_cli("train", "--all-patients", "--output", str(tmp_path / "all"), *common)
    assert result.returncode == 0, result.stderr
    _, manifest = load_model(tmp_path / "all" / "weights", "cpu")
    assert manifest["training"]["train_volumes"] == 4 and manifest["training"]["validation_volumes"] == 0
    assert "validation patients included" in manifest["training"]["split"] and not manifest["metrics"]
    result = run_cli("train", "--no-validation", "--output", str(tmp_path / "split"), *common)
    assert result.returncode == 0, result.stderr
    assert load_model(tmp_path / "split" / "weights", "cpu")[1]["training"]["train_volumes"] == 2
    # the recipe's validation (the run without the validation patients) goes into the final weights, labelled
    result = run_cli("evaluate", "--data", str(data), "--weights", str(tmp_path / "split" / "weights"),
                     "--record-recipe-in", str(tmp_path / "all" / "weights"), "--split", "val", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    final = load_model(tmp_path / "all" / "weights", "cpu")[1]
    assert final["metrics"]["validation"]["volumes"] == 2 and "same recipe" in final["metrics"]["validation"]["source"]
    assert final["training"]["validation_volumes"] == 0
    card = (tmp_path / "all" / "weights" / "MODEL_CARD.md").read_text()
    assert "## Validation of the recipe" in card and "Split: none; 4 training volumes" in card
    assert_user_error(run_cli("evaluate", "--data", str(data), "--weights", str(tmp_path / "all" / "weights"),
                              "--record", "--split", "val", "--device", "cpu"), "validation patients")
    assert_user_error(run_cli("evaluate", "--data", str(data), "--weights", str(tmp_path / "all" / "weights"),
                              "--record-recipe-in", str(tmp_path / "split" / "weights"), "--split", "val"),
                      "--all-patients")
    assert_user_error(run_cli("train", "grade", "--all-patients", "--output", str(tmp_path / "bad")), "train segment")
    with pytest.raises(MedSegError, match="none to validate"):
        TrainConfig(data=data, output=tmp_path / "bad", patients="all")
    assert not (tmp_path / "bad").exists()


def test_gpu_cycles_recipe_trains_on_the_prepared_split_without_the_imaging_libraries(tmp_path, acdc):
    """recipes/gpu_cycles.py (how the session-17 default was trained on a machine without SimpleITK):
    `prepare` writes every patient as 8-bit images; `train`, with every imaging library stubbed
    out, runs the project's trainer on the training split or on every patient, as each job asks, from
    the bundled weights and packs the weights it made.
    It replaces two functions of `training.segmentation`, so a change there that breaks it fails here."""
    import io
    import lzma
    import tarfile

    import numpy as np

    data, folder, out = tmp_path / "acdc", tmp_path / "carry", tmp_path / "out"
    data.mkdir()
    for patient in ("patient001", "patient002", "patient013"):  # two training patients, one validation
        (data / patient).symlink_to(acdc / patient)
    recipe = REPO / "recipes" / "gpu_cycles.py"
    done = subprocess.run([sys.executable, str(recipe), "prepare", str(folder), "--data", str(data)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cache = np.load(io.BytesIO(lzma.decompress((folder / "acdc_8bit.npz.xz").read_bytes())))
    assert sorted({key.split("/")[0] for key in cache.files}) == [
        "patient001_frame01", "patient001_frame12", "patient002_frame01", "patient002_frame12",
        "patient013_frame01", "patient013_frame14"]
    assert cache["patient001_frame01/image"].dtype == np.uint8 and cache["patient001_frame01/image"].max() == 255
    done = subprocess.run([sys.executable, str(recipe), "prepare", str(tmp_path / "train_only"), "--data", str(data),
                           "--patients", "train"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    train_only = np.load(io.BytesIO(lzma.decompress((tmp_path / "train_only" / "acdc_8bit.npz.xz").read_bytes())))
    assert not any(key.startswith("patient013") for key in train_only.files) and len(train_only.files) == 8
    done = subprocess.run([sys.executable, str(recipe), "train", str(tmp_path / "train_only"), "--budget", "60",
                           "--device", "cpu", "--job", "Y:patients=all"], capture_output=True, text=True,
                          env={**os.environ, "OUT": str(tmp_path / "refused"), "GPU_CYCLES_STUB_ALL": "1"})
    assert done.returncode == 1 and "holds the training split alone" in done.stderr, done.stderr
    assert not list((tmp_path / "refused").glob("weights_*"))
    env = {**os.environ, "OUT": str(out), "GPU_CYCLES_STUB_ALL": "1", "GPU_CYCLES_TIME_STEPS": "2",
           "GPU_CYCLES_MAX_STEPS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(recipe), "train", str(folder), "--budget", "900", "--device", "cpu",
                           "--job", "X:seed=3,lr=3e-4,teacher=medsegrwkv-t,teacher_tta=1,distill=0.3",
                           "--job", "Y:seed=4,patients=all",
                           "--job", "Z:seed=5,model=medsegrwkv-s,init=none,batch=4"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    with tarfile.open(out / "weights_X.tar") as tar:
        manifest = json.load(tar.extractfile("weights_X/manifest.json"))
    with tarfile.open(out / "weights_Y.tar") as tar:
        every_patient = json.load(tar.extractfile("weights_Y/manifest.json"))["training"]
    assert (every_patient["train_volumes"], every_patient["patients"], every_patient["lr"]) == (6, "all", 6e-4)
    training = manifest["training"]
    assert (training["train_volumes"], training["optimizer_steps"], training["lr"], training["seed"]) == (4, 1, 3e-4, 3)
    assert training["patients"] == "train"
    assert training["augmentation"] == "mild" and training["init"]["weights"] == "medsegrwkv-t"
    assert (training["teacher"]["weights"], training["teacher"]["tta"], training["teacher"]["distill_weight"]) == (
        "medsegrwkv-t", True, 0.3)
    assert "teacher" not in every_patient
    assert not (out / "weights_Z.tar").exists()  # 18 MB of weights: over the 16 MiB a returned file may have
    parts = sorted(out.glob("weights_Z.tar.part*"))
    assert len(parts) == 2 and all(part.stat().st_size <= 15 * 2**20 for part in parts)
    with tarfile.open(fileobj=io.BytesIO(b"".join(part.read_bytes() for part in parts))) as tar:
        scratch = json.load(tar.extractfile("weights_Z/manifest.json"))
    assert scratch["architecture"] == "medsegrwkv-s" and scratch["training"]["batch_size"] == 4
    assert scratch["training"].get("init") is None


def test_gpu_cycles_jobs_average_the_last_share_of_their_epochs():
    """A job's epochs are sized on the GPU machine from its step time, so weight averaging is asked for
    as a share of them: `average=0.3` of 20 epochs averages epochs 15-20; a share outside 0-1 is refused."""
    spec = importlib.util.spec_from_file_location("gpu_cycles", REPO / "recipes" / "gpu_cycles.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    name, job = recipe.parse_job("A:seed=3,average=0.3,in_channels=3", "medsegrwkv-t")
    assert (name, job["average"], job["overrides"]) == ("A", 0.3, {"in_channels": 3})
    assert [recipe.average_from(e, 0.3) for e in (20, 10, 2, 1)] == [15, 8, 2, 1]
    assert recipe.average_from(20, recipe.parse_job("B:seed=3", "medsegrwkv-t")[1]["average"]) is None
    with pytest.raises(SystemExit, match="share of the epochs"):
        recipe.parse_job("C:average=1.5", "medsegrwkv-t")


def test_distillation_pulls_the_student_towards_its_teacher(tmp_path, acdc):
    """`train --teacher`: the loss is zero for a student that is its teacher and grows with the
    difference; only the student learns; a run with the teacher's share at 1 ignores the labels and
    moves the student's predictions on real slices towards the teacher's; the manifest and card name
    the teacher; a teacher with another input is refused before anything is written."""
    import SimpleITK as sitk
    import torch

    from cli_helpers import assert_user_error, run_cli
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.preprocess import prepare_image
    from medsegrwkv.training.distillation import Teacher, distillation_loss
    from medsegrwkv.weights.store import load_model

    volume = prepare_image(sitk.ReadImage(str(acdc / "patient001" / "patient001_frame01.nii.gz"))).array
    x = torch.from_numpy(volume[3:7, None, 40:136, 40:136].copy())
    teacher = Teacher("medsegrwkv-t", torch.device("cpu"), "medsegrwkv-t", {})
    itself = Segmenter.from_pretrained("medsegrwkv-t", "cpu").model
    same = distillation_loss(itself(x), teacher.probabilities(x)).item()  # rounding only (no-grad kernels)
    flipped = Teacher("medsegrwkv-t", torch.device("cpu"), "unet2d", {}, tta=True)
    to_flipped = distillation_loss(itself(x), flipped.probabilities(x)).item()

    student, _ = load_model("unet2d", "cpu")
    student.eval()
    before = distillation_loss(student(x), teacher.probabilities(x))
    before.backward()
    assert same < 0.1 * to_flipped < 0.1 * before.item(), (same, to_flipped, before.item())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.segmenter.model.parameters())

    train_segmentation(TrainConfig(data=acdc, output=tmp_path / "run", model="unet2d", init="unet2d",
                                   teacher="medsegrwkv-t", distill_weight=1.0, epochs=1, max_cases=2, batch_size=4,
                                   crop=96, max_steps=12, lr=3e-4, warmup_epochs=0, validate=False, device="cpu",
                                   augmentation="mild"), show_progress=False)
    distilled, manifest = load_model(tmp_path / "run" / "weights", "cpu")
    distilled.eval()
    with torch.no_grad():
        after = distillation_loss(distilled(x), teacher.probabilities(x))
    assert after.item() < 0.8 * before.item(), (before.item(), after.item())
    recorded = manifest["training"]["teacher"]
    assert recorded["weights"] == "medsegrwkv-t" and recorded["distill_weight"] == 1.0 and not recorded["tta"]
    assert "Distilled from `medsegrwkv-t`" in (tmp_path / "run" / "weights" / "MODEL_CARD.md").read_text()

    for extra, message in ((("--set", "in_channels=3", "--teacher", "medsegrwkv-t"), "neighbouring slices"),
                           (("--teacher-tta",), "--teacher-tta needs a --teacher"),
                           (("--teacher", "medsegrwkv-t", "--distill-weight", "0"), "distillation weight")):
        out = tmp_path / f"refused{len(extra)}"
        assert_user_error(run_cli("train", "--model", "medsegrwkv-t", *extra, "--data", str(acdc),
                                  "--output", str(out), "--device", "cpu"), message)
        assert not out.exists()


@pytest.mark.parametrize("name, extra_config, context, averaged", [("s24", {}, 0, 0), ("s29", {"in_channels": 3}, 1, 2)])
def test_the_kept_twins_are_todays_default_network_with_its_pipeline(acdc, name, extra_config, context, averaged):
    """The twins stand in for a default on patients it never saw when a default trains on all 80:
    recipes/twins/s24 (today's default's start, at the session-19 default's level) for a single-slice
    one, s29 (session 29: two 2.5D cycles from s24, averaged) for a 2.5D one.
    Each must be the default's network (s29 with three input slices) with the same pipeline settings,
    trained without the validation patients, and segment an unseen validation volume as well as its
    recorded validation says."""
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.training.evaluation import evaluate_cases
    from medsegrwkv.weights.store import load_manifest

    twin_dir = REPO / "recipes" / "twins" / name
    twin, default = load_manifest(twin_dir), load_manifest("medsegrwkv-t")
    assert twin["config"] == {**default["config"], **extra_config}
    for key in ("architecture", "labels", "postprocessing"):
        assert twin[key] == default[key], key
    for key in ("spacing_xy_mm", "percentiles", "orientation"):
        assert twin["preprocessing"][key] == default["preprocessing"][key], key
    assert twin["training"]["patients"] == "train"
    assert len(twin["training"].get("averaged_from", [])) == averaged
    segmenter = Segmenter.from_pretrained(str(twin_dir), "cpu")
    assert segmenter.context == context
    case = next(c for c in list_cases(acdc, "val") if c.image.name.startswith("patient013_frame01"))
    _, summary = evaluate_cases(segmenter, [case], tta=False, show_progress=False)
    assert summary["mean_dice"] > 0.9, summary


def test_batch_dice_scores_the_batch_as_one_image_and_reaches_the_manifest(tmp_path, acdc):
    """`--dice batch` (nnU-Net's batch Dice): the loss over a batch of real label slices equals the
    per-slice loss of the same slices laid side by side as one image, so a slice with a sliver of RV or
    none weighs by its pixels; the default stays per slice. The choice is recorded in the manifest."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from cli_helpers import assert_user_error, run_cli
    from medsegrwkv.training.segmentation import segmentation_loss
    from medsegrwkv.weights import load_model

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(acdc / "patient001" / "patient001_frame12_gt.nii.gz")))
    rv = [(label[z] == 1).sum() for z in range(label.shape[0])]
    chosen = [int(np.argmax(rv)), int(np.argmin(rv))]  # the slice with the most RV, and one with the least
    labels = torch.from_numpy(label[chosen].astype(np.int64))[:, None]  # (2, 1, H, W)
    torch.manual_seed(0)
    logits = torch.randn(2, 4, *labels.shape[2:]) + 3.0 * torch.nn.functional.one_hot(labels[:, 0], 4).permute(0, 3, 1, 2)
    side_by_side = (torch.cat(list(logits), dim=-1)[None], torch.cat(list(labels), dim=-1)[None])
    batch, sample = segmentation_loss("batch")(logits, labels), segmentation_loss("sample")(logits, labels)
    assert torch.allclose(batch, segmentation_loss("sample")(*side_by_side), atol=1e-5)
    assert not torch.allclose(batch, sample, atol=1e-3)  # per slice, the sparse slice weighs as much as the full one

    result = run_cli("train", "--data", str(acdc), "--output", str(tmp_path / "run"), "--dice", "batch", "--epochs", "1",
                     "--max-steps", "1", "--max-cases", "2", "--batch-size", "2", "--crop", "64", "--no-validation",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert load_model(tmp_path / "run" / "weights", "cpu")[1]["training"]["dice"] == "batch"
    assert_user_error(run_cli("train", "grade", "--dice", "batch", "--output", str(tmp_path / "bad")), "train segment")
    with pytest.raises(MedSegError, match="Dice reduction"):
        TrainConfig(data=acdc, output=tmp_path / "bad", dice="volume")
    assert not (tmp_path / "bad").exists()


def test_average_weights_is_the_mean_of_runs_from_one_start_and_refuses_the_rest(tmp_path, acdc):
    """`average-weights` (a model soup): two real fine-tunes of the bundled `unet2d` (other seeds, cases and
    augmentations) average tensor by tensor into loadable weights whose manifest names both runs, takes the
    union of their measured ranges and drops the first run's validation until `evaluate --record` gives
    its own; runs from other starts, other networks and an existing output folder are refused."""
    import torch

    from cli_helpers import assert_user_error, run_cli
    from medsegrwkv.weights.store import load_model

    common = dict(data=acdc, model="unet2d", epochs=1, batch_size=4, crop=96, max_steps=2, lr=1e-3, validate=False,
                  device="cpu", init="unet2d")
    runs = [tmp_path / "a", tmp_path / "b"]
    train_segmentation(TrainConfig(output=runs[0], seed=1, max_cases=2, augmentation="mild", **common),
                       show_progress=False)
    train_segmentation(TrainConfig(output=runs[1], seed=2, max_cases=4, augmentation="wide", **common),
                       show_progress=False)
    folders = [str(r / "weights") for r in runs]
    (a, ma), (b, mb) = (load_model(f, "cpu") for f in folders)
    soup = tmp_path / "soup"
    result = run_cli("average-weights", *folders, "--output", str(soup))
    assert result.returncode == 0, result.stderr
    averaged, manifest = load_model(soup, "cpu")
    moved = 0
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), averaged.state_dict().values()):
        if x.is_floating_point():
            torch.testing.assert_close(z, ((x + y) / 2).half().float(), rtol=0, atol=1e-3, msg=name)
            moved += int(not torch.equal(x, y))
    assert moved > 10  # the two runs really differ
    assert [s["seed"] for s in manifest["training"]["averaged_from"]] == [1, 2]
    assert [s["augmentation"] for s in manifest["training"]["averaged_from"]] == ["mild", "wide"]
    for key in ("heart_size_mm", "noise_sigma"):
        ranges = (ma["preprocessing"][key], mb["preprocessing"][key])
        assert manifest["preprocessing"][key] == [min(r[0] for r in ranges), max(r[1] for r in ranges)]
    assert "metrics" not in manifest
    card = (soup / "MODEL_CARD.md").read_text()
    assert "The average of 2 runs' weights" in card and "Not validated yet" in card
    scored = run_cli("evaluate", "--data", str(acdc), "--split", "val", "--max-cases", "2", "--weights", str(soup),
                     "--output", str(tmp_path / "soup.csv"), "--device", "cpu")
    assert scored.returncode == 0, scored.stderr
    rows = list(csv.DictReader((tmp_path / "soup.csv").open()))
    assert len(rows) == 2 and all(float(r["LV_dice"]) > 0.8 for r in rows), rows  # it segments real hearts
    from medsegrwkv.training.loop import record_validation
    from medsegrwkv.weights.model_card import render_segmentation_card

    record_validation(soup, {"mean_dice": 0.9, "mean_hd95": 4.0}, 40, render_segmentation_card)
    assert "The averaged weights, validated after averaging (40 volumes)." in (soup / "MODEL_CARD.md").read_text()

    before = (soup / "model.safetensors").read_bytes()
    assert_user_error(run_cli("average-weights", *folders, "--output", str(soup)), "already holds weights")
    assert (soup / "model.safetensors").read_bytes() == before
    assert_user_error(run_cli("average-weights", folders[0], "medsegrwkv-t", "--output", str(tmp_path / "x")),
                      "architecture")
    assert_user_error(run_cli("average-weights", folders[0], "unet2d", "--output", str(tmp_path / "x")),
                      "same starting weights")
    assert_user_error(run_cli("average-weights", folders[0], "--output", str(tmp_path / "x")), "at least two")
    assert_user_error(run_cli("average-weights", "grader_regnetx_002", "grader_regnetx_002", "--output",
                              str(tmp_path / "x")), "segmentation weights")
    (tmp_path / "file").write_text("kept")
    assert_user_error(run_cli("average-weights", *folders, "--output", str(tmp_path / "file")), "is a file")
    assert (tmp_path / "file").read_text() == "kept"
    assert not (tmp_path / "x").exists()


def test_hard_slices_draws_the_slices_the_start_gets_wrong_more_often(tmp_path, acdc):
    """`--hard-slices`: on a real volume, a slice whose reference contradicts the starting network gets a
    larger Dice deficit and is drawn more often, in proportion to its weight; a run records the strength; without
    --init, or for another task, it is refused before anything is written."""
    import numpy as np
    from cli_helpers import assert_user_error, run_cli
    from medsegrwkv.inference.postprocess import LV, RV
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.training.data import load_volumes
    from medsegrwkv.training.hard_slices import hard_slice_sampler, sampling_weights, slice_deficits
    from medsegrwkv.weights import load_model

    volume = load_volumes(list_cases(acdc, "train")[:1], show_progress=False)[0]
    segmenter = Segmenter.from_pretrained("unet2d", "cpu")
    deficits = slice_deficits(segmenter, [volume], show_progress=False)
    assert deficits.shape == (len(volume["label"]),) and ((deficits >= 0) & (deficits <= 1)).all()
    mid = int(np.argmax([(z == LV).sum() for z in volume["label"]]))
    assert deficits[mid] < 0.2  # the network segments the mid-ventricular slice well

    wrong = {"image": volume["image"], "label": volume["label"].copy()}
    wrong["label"][mid][volume["label"][mid] == LV] = RV  # the cavity called right ventricle
    hard = slice_deficits(segmenter, [wrong], show_progress=False)
    assert hard[mid] > deficits[mid] + 0.3
    assert np.allclose(np.delete(hard, mid), np.delete(deficits, mid))

    weights = sampling_weights(hard, 1.0)
    assert np.allclose(weights, 1.0 + hard / hard.mean()) and weights[mid] > 2.0 > sampling_weights(deficits, 1.0)[mid]
    assert (sampling_weights(np.zeros(4), 1.0) == 1.0).all()
    sampler = hard_slice_sampler(weights, seed=0)
    draws = np.bincount([i for _ in range(400) for i in sampler], minlength=len(weights))
    assert len(list(sampler)) == len(weights)  # an epoch keeps its length
    assert abs(draws[mid] / draws.sum() - weights[mid] / weights.sum()) < 0.02

    result = run_cli("train", "--data", str(acdc), "--output", str(tmp_path / "run"), "--init", "unet2d",
                     "--hard-slices", "1", "--epochs", "1", "--max-steps", "1", "--max-cases", "2", "--batch-size", "2",
                     "--crop", "64", "--no-validation", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert load_model(tmp_path / "run" / "weights", "cpu")[1]["training"]["hard_slices"] == 1.0
    assert "Hard slices: each training slice drawn in proportion to 1 + 1.0 x" in (
        tmp_path / "run" / "weights" / "MODEL_CARD.md").read_text()
    assert_user_error(run_cli("train", "grade", "--hard-slices", "1", "--output", str(tmp_path / "bad")), "train segment")
    assert_user_error(run_cli("train", "--data", str(acdc), "--hard-slices", "1", "--output", str(tmp_path / "bad")),
                      "--init")
    with pytest.raises(MedSegError, match="--init"):
        TrainConfig(data=acdc, output=tmp_path / "bad", hard_slices=-1.0, init="unet2d")
    with pytest.raises(MedSegError, match="3D"):
        TrainConfig(data=acdc, output=tmp_path / "bad", model="unet3d", hard_slices=1.0, init="unet3d")
    assert not (tmp_path / "bad").exists()


def test_average_from_holds_the_rate_and_exports_the_mean_of_the_epochs_weights(tmp_path, acdc):
    """`--average-from` (stochastic weight averaging): from that epoch the learning rate holds, and the exported
    network is the mean of the weights at the end of each epoch since, also across a resume: a run stopped after
    epoch 2 and resumed exports (w2 + w3) / 2, its card says so; an epoch outside the run is refused."""
    from medsegrwkv.weights.store import load_model

    out = tmp_path / "swa"
    cfg = TrainConfig(data=acdc, output=out, model="medsegrwkv-t", epochs=3, max_cases=2, batch_size=4, crop=64,
                      lr=1e-3, warmup_epochs=0, validate=False, device="cpu", init="medsegrwkv-t", average_from=2)
    # epochs 1 and 2 cut short at 3 optimiser steps each (`max_steps` counts the run's steps), epoch 3 whole
    state_dicts = []
    for max_steps in (3, 6, None):
        result = train_segmentation(dataclasses.replace(cfg, max_steps=max_steps), show_progress=False)
        state_dicts.append({k: v.clone() for k, v in result["model"].state_dict().items()})
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["lr"] > history[1]["lr"] == history[2]["lr"]  # held where the cosine had brought it at epoch 2
    averaged, manifest = load_model(out / "weights", "cpu")
    assert manifest["training"]["weight_average"] == {"from_epoch": 2, "epochs_averaged": 2}
    # the export is float16: the mean, rounded as the export rounds it, matches all but a rare tie of rounding,
    # while the last weights alone differ in most entries (epoch 3 really moved them)
    entries = off_mean = off_last = 0
    for name, value in averaged.state_dict().items():
        if value.is_floating_point():
            w2, w3 = state_dicts[1][name].cpu(), state_dicts[2][name].cpu()
            entries += value.numel()
            off_mean += int((value != ((w2 + w3) / 2).half().float()).sum())
            off_last += int((value != w3.half().float()).sum())
    assert off_mean < 0.01 * entries and off_last > 0.5 * entries, (off_mean, off_last, entries)
    assert "the average of the network's at the end of each of its last 2 epochs" in (
        out / "weights" / "MODEL_CARD.md").read_text()
    with pytest.raises(MedSegError, match="--average-from takes an epoch from 1 to the run's 3, got 4"):
        dataclasses.replace(cfg, output=tmp_path / "no", average_from=4)
    from cli_helpers import assert_user_error, run_cli

    for command in (("train", "grade", "--average-from", "3"), ("train", "--data", str(acdc), "--epochs", "3",
                                                               "--average-from", "0")):
        assert_user_error(run_cli(*command, "--output", str(tmp_path / "no")), "--average-from")
    assert not (tmp_path / "no").exists()
