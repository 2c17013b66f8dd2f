"""`medsegrwkv train grade`: train a motion-artefact grader on clean slices with simulated motion.

Training data: the ACDC training patients (fixed split, `training.acdc`) plus evenly spaced
phases of the Sunnybrook study, corrupted on the fly (`grading.dataset`). Optionally real graded
slices in the CMRxMotion layout are mixed in (`--cmrxmotion`), with set-valued labels when they
are graded on the 3-level scale. Validation: the ACDC validation patients with motion simulated
from a fixed seed (every slice at two scores), reporting accuracy, Cohen's kappa (unweighted and
linear-weighted, 5 scores and CMRxMotion's 3 levels), per-score recall and the expected
calibration error before/after temperature scaling. The best epoch (linear-weighted kappa)
is exported as a weights folder whose manifest carries the fitted temperature; the grader
divides its logits by it. AdamW, warm-up then cosine decay, a checkpoint every epoch
(`checkpoint.pt`, resumed automatically) and `history.jsonl`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, WeightedRandomSampler
from tqdm import tqdm

from medsegrwkv.training.loop import RunFolder, optimiser_step
from medsegrwkv.training.schedule import warmup_cosine
from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.io.atomic import write_npz_atomic
from medsegrwkv.io.text import write_text_atomic
from medsegrwkv.grading.dataset import (
    GRADER_PREPROCESSING, SimulatedMotionSlices, load_acdc_volumes, load_study_volumes, simulated_validation_set,
)
from medsegrwkv.grading.metrics import grading_metrics
from medsegrwkv.inference.device import resolve_device, training_autocast
from medsegrwkv.nets.registry import config_changes, create_model, get_spec, model_config
from medsegrwkv.training.acdc import VALIDATION_RESIDUES, list_cases
from medsegrwkv.weights.manifest import ACDC_LICENCE
from medsegrwkv.weights.model_card import comparison_lines
from medsegrwkv.weights.store import load_model, save_weights

SCORE_LABELS = {
    "scores": [1, 2, 3, 4, 5],
    "meaning": {"5": "excellent: no motion artefact", "4": "more than adequate for diagnosis: minor artefacts",
                "3": "adequate for diagnosis: artefacts, image quality somewhat reduced",
                "2": "questionable for diagnosis: marked artefacts", "1": "non-diagnostic"},
    "levels": {"mild": [4, 5], "moderate": [3], "severe": [1, 2]},
    "diagnostic": "score >= 3",
    "source": "5-point Likert scale and level mapping of the CMRxMotion challenge (MICCAI 2022)",
}
SUNNYBROOK_LICENCE = "Sunnybrook Cardiac Data (Radau et al., MIDAS Journal 2009), CC0 1.0"


@dataclass
class GradeTrainConfig:
    output: Path
    data: Path  # an ACDC-layout folder
    sunnybrook: Path | None = None  # a cine study added to the training data (the CLI adds the shared one)
    sunnybrook_phases: int = 4
    model: str = "grader_regnetx_002"
    overrides: dict[str, Any] = field(default_factory=dict)  # model config entries, e.g. backbone_size=112
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    val_per_slice: int = 2
    val_seed: int = 20240
    max_steps: int | None = None  # stop after N optimiser steps (smoke tests)
    max_cases: int | None = None  # first N ACDC training volumes only (smoke tests)
    max_val_cases: int | None = None  # first N ACDC validation volumes only (smoke tests)
    max_minutes: float | None = None  # stop at the first epoch end after this much training time
    cmrxmotion: Path | None = None  # real graded data (CMRxMotion layout) mixed into training
    init: str | None = None  # start from these weights (a registered name or a folder): fine-tuning
    validate: bool = True
    # Against mistaking anatomy for motion (issue 21; docs/grading.md "Anatomy is not motion"):
    clean_fraction: float = 0.15  # share of samples that are the untouched slice, labelled 5
    position_balance: float = 0.5  # mix of uniform (0) and position-balanced (1) slice sampling
    nuisance: bool = True  # coil shading, resolution and noise augmentation on every sample


def _set_nll(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-log P(score in the allowed set); the cross-entropy when one score is allowed."""
    logits = logits.float()
    allowed = logits.masked_fill(~mask, float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(allowed, 1)).mean()


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                   batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device=device, dtype=torch.float32)
        out.append(model(x).float().cpu())
    return torch.cat(out).numpy()


def _manifest(cfg: GradeTrainConfig, info: dict[str, Any], metrics: dict[str, Any] | None,
              temperature: float) -> dict[str, Any]:
    licence = ACDC_LICENCE + (f" Also trained on {SUNNYBROOK_LICENCE}." if cfg.sunnybrook else "")
    return {
        "name": cfg.model,
        "architecture": cfg.model,
        "config": model_config(cfg.model, **cfg.overrides),
        "task": "grading",
        "spatial_dims": 2,
        "labels": SCORE_LABELS,
        "preprocessing": GRADER_PREPROCESSING,
        "calibration": {"temperature": temperature,
                        "note": "probabilities = softmax(logits / temperature); temperature fitted on the "
                                "simulated validation set (negative log-likelihood)"},
        "training": {**info, "torch": torch.__version__,
                     "caveat": "labels come from simulated respiratory motion (medsegrwkv.grading.simulator), "
                               "not from radiologists' grades of real motion"},
        "licence": licence,
        "metrics": {"validation": metrics} if metrics else {},
    }


def model_card(manifest: dict[str, Any]) -> str:
    """MODEL_CARD.md text for a grader weights folder, from its manifest."""
    from medsegrwkv.nets.complexity import count_parameters

    name, training = manifest["name"], manifest.get("training", {})
    val = manifest.get("metrics", {}).get("validation", {})
    params = count_parameters(create_model(manifest["architecture"], **manifest.get("config", {})))
    changes = config_changes(manifest["architecture"], manifest.get("config", {}))
    lines = [
        f"# Model card: {name} (respiratory-motion artefact grader)", "",
        f"- Architecture: `{manifest['architecture']}` = timm `{manifest['config'].get('arch')}`, 1 input channel, "
        f"5 outputs (Likert scores 1-5), {params / 1e6:.2f} M parameters, "
        + (f"fine-tuned from {training['init']}." if training.get("init") else "trained from scratch."),
        "- Input: one short-axis slice, canonical orientation, 1.5625 mm pixels, volume then slice percentile "
        "normalisation, centre crop/pad to 224 x 224 (`medsegrwkv.grading.dataset`)"
        + (f"; the backbone runs on it area-averaged to {changes['backbone_size']} x {changes['backbone_size']} "
           "(the same field of view, coarser pixels: a reduced size for CPU training)."
           if changes.get("backbone_size") else "."),
        f"- Output: softmax(logits / T) with the temperature T = {manifest['calibration']['temperature']:.3f} fitted "
        "on the validation set; reported as expected score, median score, CMRxMotion level (mild 4-5, "
        "moderate 3, severe 1-2), confidence and diagnostic flag (score >= 3).",
        "- Intended use: flag slices spoiled by breathing while the patient is still on the table; research use. "
        "Not a medical device.", "",
        "## Training data", "",
        f"- {training.get('train_volumes')} clean volumes ({training.get('train_slices')} slices): the ACDC training "
        f"patients of the fixed split ({training.get('split')}) and {training.get('sunnybrook') or 'no other study'} "
        "(evenly spaced phases), with respiratory motion simulated in k-space on the fly "
        "(`medsegrwkv.grading.simulator`; score rule in docs/grading.md), target scores uniform over 1-5.",
        f"- Real graded slices mixed in: {training.get('real_graded_slices', 0)}.",
        *([f"- Against reading anatomy as motion (issue 21): {training['clean_fraction']:.0%} of samples are the "
           f"untouched slice labelled 5; slice positions (apical/mid/basal thirds of the LV, slices beyond the "
           f"heart) sampled {training.get('position_balance', 0):.0%} balanced; coil-shading, resolution and noise "
           "augmentation " + ("on" if training.get("nuisance") else "off") + "."]
          if training.get("clean_fraction") is not None else []),
        *([f"- Started from: {training['init']}."] if training.get("init") else []),
        f"- {training.get('epochs_completed')} epochs, {training.get('optimizer_steps')} steps, batch "
        f"{training.get('batch_size')}, AdamW lr {training.get('lr')}, device {training.get('device')}, "
        f"{training.get('wall_time_s')} s.",
        f"- Licence: {manifest.get('licence')}", "",
        "## Validation (simulated motion)", "",
        f"{training.get('validation_volumes')} volumes of the 20 ACDC validation patients, "
        f"{training.get('validation')} ({val.get('samples')} samples, every score equally often), epoch "
        f"{val.get('epoch')} ("
        + ("the best linear-weighted kappa among the epochs whose clean validation slices of every position are "
           f"graded mild at least {CLEAN_MILD_TARGET:.0%} of the time" if val.get("clean") else
           "the best linear-weighted kappa") + ").", "",
        "| metric | value |", "|---|---|",
    ]
    for key, label in (("accuracy", "accuracy (5 scores)"), ("kappa", "Cohen's kappa, unweighted (5 scores)"),
                       ("kappa_linear", "Cohen's kappa, linear weights (5 scores)"),
                       ("accuracy_3level", "accuracy (3 CMRxMotion levels)"),
                       ("kappa_3level", "Cohen's kappa, unweighted (3 levels, as CMRxMotion)"),
                       ("mean_abs_error_expected_score", "mean absolute error of the expected score"),
                       ("ece", "expected calibration error, before temperature scaling"),
                       ("ece_temperature_scaled", "expected calibration error, after (T from the other half of "
                                                  "the patients)"),
                       ("temperature", "temperature (fitted on all validation samples)")):
        if val.get(key) is not None:
            lines.append(f"| {label} | {val[key]:.3f} |")
    recall = val.get("recall", {})
    lines.append("| recall per true score 1 / 2 / 3 / 4 / 5 | "
                 + " / ".join(f"{recall[s]:.2f}" if recall.get(s) is not None else "-" for s in "12345") + " |")
    if val.get("confusion"):
        lines += ["", "Confusion matrix (rows: true score 1-5, columns: predicted 1-5):", "", "```"]
        lines += [" ".join(f"{v:4d}" for v in row) for row in val["confusion"]]
        lines.append("```")
    clean = val.get("clean")
    if clean:
        lines += ["", "Clean validation slices graded mild (median score 4-5), per position: "
                  + ", ".join(f"{p} {r:.3f}" for p, r in clean["mild_rate_by_position"].items())
                  + f" (all {clean['mild_rate']:.3f}, {clean['slices']} slices)."]
    external = manifest.get("metrics", {}).get("external_torchio")
    if external:
        lines += ["", "## Evaluation outside the training simulator (TorchIO)", "",
                  "`medsegrwkv evaluate-grades --torchio`: the ACDC validation slices clean and with TorchIO's "
                  "RandomMotion / RandomGhosting at strengths 1-3 (levels by convention: 0-1 mild, 2 moderate, "
                  "3 severe; docs/grading.md).", "",
                  "| artefact | Spearman (E[score], strength) | 3-level accuracy | 3-level linear kappa |",
                  "|---|---|---|---|"]
        for key in ("motion", "ghosting", "all"):
            b = external[key]
            lines.append(f"| {key} | {b['spearman_expected_score_vs_strength']:.3f} | {b['accuracy_3level']:.3f} | "
                         f"{b['kappa_linear_3level']:.3f} |")
        lines += ["", "Clean slices graded below 4: " + ", ".join(
            f"{p} {b['below_4_rate']:.3f} (n={b['slices']})" for p, b in external["clean_by_position"].items()) + "."]
    lines += [
        "", "## Caveats", "",
        "- These numbers come from **simulated** motion on held-out patients, not from radiologists' grades of real "
        "respiratory motion: they measure how well the grader inverts the simulator. Real-data accuracy is "
        "unknown until the grader is evaluated on graded real data such as CMRxMotion (whose best challenge "
        "test results were accuracy 0.725 / kappa 0.631 on 3 levels; not comparable with the table above).",
        "- ACDC intensities were clipped and rescaled by the redistributor and its spacing is nominal; the "
        "simulator models rigid in-plane motion only (no through-plane motion, no cardiac-phase mixing, no "
        "coil sensitivities or parallel imaging).",
        "- Licence: trained on ACDC (CC BY-NC-SA 4.0): research and non-commercial use only; cite Bernard et al., "
        "IEEE TMI 37(11), 2018.", "",
        "## Reproduce", "", "```",
        f"OMP_NUM_THREADS=1 medsegrwkv train grade --model {name} --output runs/grade_{name.removeprefix('grader_')} "
        f"--epochs {training.get('epochs_planned', training.get('epochs_completed'))} "
        f"--batch-size {training.get('batch_size')} --lr {training.get('lr')} --workers 1 --device cpu"
        + (f" --init {str(training['init']).split()[0]}" if training.get("init") else "")
        + (f" --max-minutes {training['max_minutes']}" if training.get("max_minutes") else "")
        + "".join(f" --set {k}={json.dumps(v)}" for k, v in changes.items()),
        "```", "",
        *comparison_lines(manifest.get("comparisons", [])),
    ]
    return "\n".join(lines)


def write_model_card(weights_dir: Path) -> Path:
    from medsegrwkv.weights import load_manifest

    manifest = load_manifest(weights_dir)
    if manifest is None:
        raise MedSegError(f"{weights_dir} holds no weights manifest.", code=ErrorCode.WEIGHTS_MISSING)
    path = Path(weights_dir) / "MODEL_CARD.md"
    write_text_atomic(path, model_card(manifest))
    return path


CLEAN_MILD_TARGET = 0.9  # share of clean slices of every position that should be graded mild (4-5)


def clean_validation_set(volumes: list[Any]) -> dict[str, Any]:
    """The untouched validation slices (every non-blank one) with their positions."""
    from medsegrwkv.grading.dataset import slice_to_input

    images, positions = [], []
    for volume in volumes:
        for z, where in enumerate(volume.positions or [None] * len(volume.array)):
            if where is not None:
                images.append(slice_to_input(volume.array[z]).astype(np.float16))
                positions.append(where)
    return {"images": torch.from_numpy(np.stack(images)[:, None]), "positions": np.array(positions)}


def clean_metrics(logits: np.ndarray, positions: np.ndarray, temperature: float = 1.0) -> dict[str, Any]:
    """Share of clean slices graded mild (median score >= 4), overall and per position."""
    from medsegrwkv.grading.metrics import softmax

    score = (np.cumsum(softmax(logits, temperature), axis=1) < 0.5).sum(1) + 1
    by_position = {str(p): float((score[positions == p] >= 4).mean()) for p in np.unique(positions)}
    return {"slices": int(len(score)), "mild_rate": float((score >= 4).mean()),
            "mild_rate_by_position": by_position, "min_position_mild_rate": min(by_position.values())}


def _better(new: dict[str, Any], best: dict[str, Any]) -> bool:
    """Epoch selection: the highest linear kappa among epochs whose clean slices of every position are
    graded mild at least CLEAN_MILD_TARGET of the time; before any epoch reaches that, the highest
    worst-position clean mild rate. Without clean metrics, the highest linear kappa."""
    if "clean" not in new or "clean" not in best:
        return new["kappa_linear"] > best["kappa_linear"]
    a, b = new["clean"]["min_position_mild_rate"], best["clean"]["min_position_mild_rate"]
    if (a >= CLEAN_MILD_TARGET) != (b >= CLEAN_MILD_TARGET):
        return a >= CLEAN_MILD_TARGET
    if a >= CLEAN_MILD_TARGET:
        return new["kappa_linear"] > best["kappa_linear"]
    return a > b or (a == b and new["kappa_linear"] > best["kappa_linear"])


def train_grader(cfg: GradeTrainConfig, show_progress: bool = True) -> dict[str, Any]:
    """Train (or resume) and return the best validation metrics and where the weights are."""
    spec = get_spec(cfg.model)
    if spec.task != "grading":
        raise MedSegError(f"Model '{cfg.model}' is a {spec.task} model; `train grade` trains grading models "
                          "(see `medsegrwkv models`).", code=ErrorCode.WRONG_TASK)
    device = resolve_device(cfg.device)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    train_cases = list_cases(cfg.data, "train")[: cfg.max_cases]
    volumes = load_acdc_volumes(train_cases, show_progress, positions=True)
    if cfg.sunnybrook is not None:
        if not Path(cfg.sunnybrook).exists():
            raise MedSegError(f"The Sunnybrook study {cfg.sunnybrook} does not exist; pass --sunnybrook none to "
                              "train without it.", code=ErrorCode.BAD_DATA)
        volumes += load_study_volumes(Path(cfg.sunnybrook), Path(cfg.sunnybrook).name, cfg.sunnybrook_phases)
    datasets: list[Any] = [SimulatedMotionSlices(volumes, seed=cfg.seed, clean_fraction=cfg.clean_fraction,
                                                 nuisance=cfg.nuisance)]
    n_real = 0
    if cfg.cmrxmotion is not None:
        from medsegrwkv.grading.cmrxmotion import CMRxMotionSlices, load_cmrxmotion

        real = CMRxMotionSlices(load_cmrxmotion(cfg.cmrxmotion), seed=cfg.seed)
        n_real = len(real)
        datasets.append(real)
    dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = None
    if cfg.position_balance > 0:
        weights = (1 - cfg.position_balance) / len(datasets[0]) + cfg.position_balance * datasets[0].position_weights()
        if len(datasets) > 1:  # real graded slices keep their uniform share
            weights = np.concatenate([weights * len(datasets[0]), np.ones(len(datasets[1]))]) / len(dataset)
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(dataset), replacement=True,
                                        generator=generator)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.workers, drop_last=len(dataset) >= cfg.batch_size, persistent_workers=False,
                        generator=generator if sampler is None else None)

    val: dict[str, Any] | None = None
    val_cases = []
    clean_val: dict[str, Any] | None = None
    if cfg.validate:
        val_cases = list_cases(cfg.data, "val")[: cfg.max_val_cases]
        val_volumes = load_acdc_volumes(val_cases, show_progress, positions=True)
        val = simulated_validation_set(val_volumes, cfg.val_per_slice, cfg.val_seed, show_progress=show_progress)
        clean_val = clean_validation_set(val_volumes)

    if cfg.init:
        model, _ = load_model(cfg.init, device)
        if model.__class__ is not create_model(cfg.model, **cfg.overrides).__class__:
            raise MedSegError(f"--init weights {cfg.init} are not a {cfg.model} model.", code=ErrorCode.BAD_WEIGHTS)
        model.train()
    else:
        model = create_model(cfg.model, **cfg.overrides).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, cfg.epochs, max(1, len(loader)), cfg.warmup_epochs)
    run = RunFolder(out, config=cfg)
    state = run.resume(model, optimizer, scheduler, device, announce=show_progress)

    info = {
        "data": str(cfg.data), "split": f"ACDC patients with number % 20 in {list(VALIDATION_RESIDUES)} -> validation",
        "train_volumes": len(volumes), "train_slices": len(datasets[0]), "real_graded_slices": n_real,
        "sunnybrook": str(cfg.sunnybrook) if cfg.sunnybrook else None,
        "validation_volumes": len(val_cases), "validation_samples": int(len(val["scores"])) if val else 0,
        "validation": f"every non-empty validation slice at {cfg.val_per_slice} simulated scores, seed {cfg.val_seed}",
        "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "seed": cfg.seed,
        "device": str(device), "init": cfg.init, "epochs_planned": cfg.epochs, "max_minutes": cfg.max_minutes,
        "clean_fraction": cfg.clean_fraction, "position_balance": cfg.position_balance, "nuisance": cfg.nuisance,
    }
    started = time.time() - state["seconds"]
    stop = False
    last_loss = math.nan
    for epoch in range(state["epoch"], cfg.epochs):
        datasets[0].set_epoch(epoch)
        if len(datasets) > 1:
            datasets[1].set_epoch(epoch)
        model.train()
        losses: list[float] = []
        correct = seen = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not show_progress,
                   leave=False)
        for batch in bar:
            x, mask = batch["image"].to(device), batch["mask"].to(device)
            with training_autocast(device):
                logits = model(x)
            loss = _set_nll(logits, mask)
            losses.append(optimiser_step(loss, model, optimizer, scheduler, state, 5.0))
            correct += int(mask[torch.arange(len(mask)), logits.argmax(1)].sum())
            seen += len(mask)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{correct / max(1, seen):.2f}",
                            lr=f"{scheduler.get_last_lr()[0]:.1e}")
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                stop = True
                break
        last_loss = float(np.mean(losses)) if losses else math.nan
        state["epoch"] = epoch + 1
        state["seconds"] = time.time() - started
        record: dict[str, Any] = {"epoch": epoch + 1, "step": state["step"], "loss": last_loss,
                                  "train_accuracy": correct / max(1, seen), "lr": scheduler.get_last_lr()[0],
                                  "seconds": round(state["seconds"], 1)}
        if cfg.max_minutes is not None and state["seconds"] > 60 * cfg.max_minutes:
            stop = True
        info_now = {**info, "epochs_completed": epoch + 1, "optimizer_steps": state["step"],
                    "wall_time_s": round(state["seconds"], 1)}
        if val is not None:
            logits = predict_logits(model, val["images"], device)
            metrics = grading_metrics(logits, val["scores"], val["patients"])
            if clean_val is not None:
                metrics["clean"] = clean_metrics(predict_logits(model, clean_val["images"], device),
                                                 clean_val["positions"], metrics["temperature"])
            record["validation"] = {k: metrics[k] for k in ("accuracy", "kappa", "kappa_linear", "kappa_3level",
                                                              "ece", "ece_temperature_scaled", "temperature")}
            if "clean" in metrics:
                record["validation"]["clean_mild_rate_by_position"] = metrics["clean"]["mild_rate_by_position"]
            if state["best"] is None or _better(metrics, state["best"]):
                state["best"], state["best_epoch"] = metrics, epoch + 1
                metrics = {**metrics, "epoch": epoch + 1}
                save_weights(model, _manifest(cfg, info_now, metrics, metrics["temperature"]), out / "weights")
                write_model_card(out / "weights")
                write_npz_atomic(out / "validation_logits.npz",
                                 {"logits": logits, "scores": val["scores"], "patients": val["patients"]})
        else:
            save_weights(model, _manifest(cfg, info_now, None, 1.0), out / "weights")
        run.save(model, optimizer, scheduler, state, record)
        if show_progress:
            v = record.get("validation")
            tqdm.write(f"epoch {epoch + 1}: loss {last_loss:.4f}, train acc {record['train_accuracy']:.3f}"
                       + (f", validation acc {v['accuracy']:.3f}, kappa {v['kappa']:.3f}, linear kappa "
                          f"{v['kappa_linear']:.3f}, 3-level kappa {v['kappa_3level']:.3f}, ECE {v['ece']:.3f}"
                          if v else ""))
        if stop:
            break
    return {"best": state["best"], "best_epoch": state["best_epoch"], "steps": state["step"], "loss": last_loss,
            "weights": str(out / "weights"),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}
