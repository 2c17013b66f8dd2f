"""`medsegrwkv compare`: trained weights folders side by side, as one Markdown table.

Each row comes from one weights folder (`medsegrwkv train ... --output RUN` writes RUN/weights):
its validation metrics and training budget from the manifest, its size counted here, and the CPU
time per slice measured here in this process (median over a 10-slice study: 256x256 slices for
segmentation models, the 224x224 inputs for motion graders), so the rows of one table are timed on
the same machine in the same run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsegrwkv.benchmark.measure import demo_volume, median_ms
from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.nets.complexity import count_gflops, count_parameters, reference_input_shape
from medsegrwkv.nets.registry import config_changes
from medsegrwkv.weights import load_model
from medsegrwkv.weights.model_card import render_table

STUDY = (10, 256, 256)


def describe_config(manifest: dict[str, Any]) -> str:
    """The config entries that differ from the architecture's registered defaults."""
    changed = config_changes(manifest["architecture"], manifest.get("config", {}))
    return ", ".join(f"{k}={v}" for k, v in changed.items())


def compare_weights(folders: list[Path], repeats: int = 3) -> list[dict[str, Any]]:
    """One row per weights folder; all of one task (segmentation models or motion graders)."""
    rows = []
    cpu = torch.device("cpu")
    for folder in folders:
        model, manifest = load_model(folder, cpu)
        task = manifest.get("task", "segmentation")
        if rows and task != rows[0]["task"]:
            raise MedSegError(f"{folder} holds a {task} model and {rows[0]['folder']} a {rows[0]['task']} model; "
                              "compare weights of one task at a time.", code=ErrorCode.WRONG_TASK)
        if task not in ("segmentation", "grading"):
            raise MedSegError(f"{folder} holds a {task} model; compare takes segmentation or grading weights.",
                              code=ErrorCode.WRONG_TASK)
        validation = manifest.get("metrics", {}).get("validation")
        if not validation:
            raise MedSegError(f"{folder} has no validation metrics in its manifest (trained with --no-validation?).",
                              code=ErrorCode.BAD_WEIGHTS)
        ms = _time_per_study(model, manifest, cpu, repeats)
        training = manifest.get("training", {})
        run = _run_history(Path(folder).parent / "history.jsonl") if Path(folder).is_dir() else {}
        rows.append({
            "task": task, "folder": str(folder), "name": manifest["name"], "config": describe_config(manifest),
            "params": count_parameters(model),
            "gflops": count_gflops(model, reference_input_shape(manifest["architecture"], manifest.get("config"))),
            "cpu_ms_per_slice": ms / STUDY[0], "threads": torch.get_num_threads(),
            "epochs": run.get("epochs", training.get("epochs_completed")), "best_epoch": validation.get("epoch"),
            "crop": training.get("crop"), "batch_size": training.get("batch_size"), "lr": training.get("lr"),
            "wall_time_s": run.get("seconds", training.get("wall_time_s")), "validation": validation,
        })
    return rows


def _time_per_study(model: torch.nn.Module, manifest: dict[str, Any], device: torch.device, repeats: int) -> float:
    """Median ms for a 10-slice study (segmentation: the demo study's 256x256 slices through the
    pipeline's network call, as `benchmark` times them; grading: the grader's inputs of 10 slices)."""
    rng = np.random.default_rng(0)
    if manifest.get("task") == "grading":
        from medsegrwkv.grading.grade import Grader

        grader = Grader(model, manifest, device)
        inputs = rng.random((STUDY[0], 1, grader.size, grader.size), dtype=np.float32)
        return median_ms(lambda: grader.probabilities(inputs), device, repeats)[0]
    segmenter = Segmenter(model, manifest, device)
    study = demo_volume(STUDY)
    with torch.inference_mode():
        return median_ms(lambda: segmenter.predict_probabilities(study, tta=False), device, repeats)[0]


def _run_history(path: Path) -> dict[str, Any]:
    """Epochs run and training seconds of the whole run, from the run folder's history.jsonl."""
    if not path.is_file():
        return {}
    last = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][-1:]
    return {"epochs": last[0]["epoch"], "seconds": last[0]["seconds"]} if last else {}


def write_comparison(rows: list[dict[str, Any]], output: Path) -> None:
    from medsegrwkv.io.text import write_text_atomic

    write_text_atomic(output, render_table(rows))
    write_text_atomic(output.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
