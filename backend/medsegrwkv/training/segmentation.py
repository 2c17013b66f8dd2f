"""`medsegrwkv train`: segmentation training on an ACDC-layout folder.

Dice + cross-entropy, AdamW with linear warm-up then cosine decay, checkpoints every epoch
(`checkpoint.pt`, resumed automatically), validation through the deployed inference path every
`val_every` epochs, and the best model exported as a weights folder (safetensors + manifest).
With `average_from`, the rate holds from that epoch and the network exported is the average of the
weights at the end of each epoch since (stochastic weight averaging, Izmailov et al., UAI 2018).
Runs as one process or under torchrun (DistributedDataParallel).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from medsegrwkv.training.schedule import warmup_cosine
from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.inference.device import training_autocast
from medsegrwkv.inference.heart_size import training_range_mm
from medsegrwkv.preprocess.noise import training_noise_range
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.nets.registry import create_model, get_spec, model_config, slice_context
from medsegrwkv.preprocess import DEFAULT_PREPROCESSING
from medsegrwkv.training.loop import RunFolder, export_weights, train_epoch
from medsegrwkv.training.acdc import VALIDATION_RESIDUES, list_cases
from medsegrwkv.training.data import check_augmentation, load_volumes, training_dataset
from medsegrwkv.training.distillation import Teacher, distillation_loss
from medsegrwkv.training.distributed import DistContext, barrier, init_distributed, shutdown
from medsegrwkv.training.hard_slices import hard_slice_sampler, sampling_weights, slice_deficits
from medsegrwkv.training.evaluation import evaluate_cases
from medsegrwkv.weights.manifest import ACDC_LICENCE, SEGMENTATION_LABELS
from medsegrwkv.weights.model_card import render_segmentation_card


# Model config keys that change only what training sees, and the state-dict entries they add.
TRAINING_ONLY_CONFIG = ("deep_supervision",)
TRAINING_ONLY_PREFIXES = ("aux_heads.",)
# the loss's Dice term over each slice or over the whole batch (`TrainConfig.dice`)
DICE_REDUCTIONS = ("sample", "batch")


def with_neighbour_channels(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`state` of a one-slice network for `model`, which takes 2n + 1 slices: each first-layer kernel
    goes to the centre slice's channel and the neighbours' start at zero, so the 2.5D network begins
    as exactly the network it grew from and training adds what the neighbours tell."""
    target = model.state_dict()
    grown = dict(state)
    for key, value in state.items():
        shape = target[key].shape if key in target else value.shape
        if value.dim() > 2 and value.shape[1] == 1 and shape[1] > 1 and shape[1] % 2 and (
                shape[:1] + shape[2:] == value.shape[:1] + value.shape[2:]):
            grown[key] = torch.zeros(shape, dtype=value.dtype)
            grown[key][:, shape[1] // 2] = value[:, 0]
    return grown


@dataclass
class TrainConfig:
    data: Path
    output: Path
    model: str = "unet2d"
    epochs: int = 100
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    crop: int = 160  # in-plane crop (pixels); 3D models use their registered roi_size
    augmentation: str = "wide"  # training.data.AUGMENTATIONS
    val_every: int = 5
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    max_cases: int | None = None  # limit training volumes (smoke tests)
    max_steps: int | None = None  # stop after this many optimiser steps (smoke tests)
    validate: bool = True
    # "all": the validation patients are trained on too (the final model, once validation has fixed
    # the recipe), so nothing is left to validate on
    patients: str = "train"
    overrides: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # start from these weights (a registered name or a folder): fine-tuning
    teacher: str | None = None  # distil from these weights' soft predictions too (training.distillation)
    teacher_tta: bool = False  # the teacher's predictions averaged over in-plane rotations (`Segmenter.batch_probabilities`)
    distill_weight: float = 0.5  # the teacher's share of the loss; the labels keep the rest
    # the Dice term over each slice ("sample") or over the whole batch as one ("batch", as nnU-Net): a slice
    # without a structure, or with a sliver of it, weighs as much as a mid-ventricular one only per sample
    dice: str = "sample"
    # > 0: training slices drawn in proportion to 1 + hard_slices x their Dice deficit under the --init
    # weights (training.hard_slices); 0 draws every slice once an epoch
    hard_slices: float = 0.0
    # from this epoch (1-based) on, the learning rate holds where the cosine had brought it and the weights at the
    # end of each epoch are averaged; the average is what is validated and exported (None: no averaging)
    average_from: int | None = None

    def __post_init__(self) -> None:
        check_augmentation(self.augmentation)  # before anything is loaded or written
        if self.patients not in ("train", "all"):
            raise MedSegError(f"Unknown patients '{self.patients}'; choose train or all.", code=ErrorCode.BAD_ARGUMENT)
        if self.patients == "all" and self.validate:
            raise MedSegError("Training on all patients leaves none to validate on: turn validation off.",
                              code=ErrorCode.BAD_ARGUMENT)
        if self.teacher is None and self.teacher_tta:
            raise MedSegError("--teacher-tta needs a --teacher.", code=ErrorCode.BAD_ARGUMENT)
        if self.dice not in DICE_REDUCTIONS:
            raise MedSegError(f"Unknown Dice reduction '{self.dice}'; choose {' or '.join(DICE_REDUCTIONS)}.",
                              code=ErrorCode.BAD_ARGUMENT)
        if self.hard_slices < 0 or (self.hard_slices > 0 and self.init is None):
            raise MedSegError("--hard-slices takes a strength >= 0 and needs --init weights to find the hard slices "
                              "with.", code=ErrorCode.BAD_ARGUMENT)
        if self.hard_slices > 0 and get_spec(self.model).spatial_dims != 2:
            raise MedSegError(f"--hard-slices draws 2D slices; {self.model} is a 3D model.", code=ErrorCode.BAD_ARGUMENT)
        if self.average_from is not None and not 1 <= self.average_from <= self.epochs:
            raise MedSegError(f"--average-from takes an epoch from 1 to the run's {self.epochs}, got "
                              f"{self.average_from}.", code=ErrorCode.BAD_ARGUMENT)
        if not 0.0 < self.distill_weight <= 1.0:
            raise MedSegError(f"The distillation weight must lie in (0, 1], got {self.distill_weight}.",
                              code=ErrorCode.BAD_ARGUMENT)


def segmentation_loss(dice: str = "sample") -> DeepSupervisionLoss:
    """Dice + cross-entropy, the Dice over each slice or over the batch (`TrainConfig.dice`): one output
    passes straight through; a deeply supervised model's list is weighted 1, 1/2, 1/4, ..."""
    return DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True, batch=dice == "batch"), weight_mode="exp")


def batch_loss(net: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
               loss_fn: DeepSupervisionLoss, teacher: Teacher | None = None, distill_weight: float = 0.5) -> torch.Tensor:
    """One training batch's loss: `loss_fn` against the labels and, with a teacher, the KL divergence
    from its probabilities on the same images for `distill_weight` of the total. Here once, so that
    whatever times a training step (recipes/gpu_cycles.py) does exactly the trainer's work."""
    images = batch["image"].to(device)
    with training_autocast(device):
        outputs = net(images)
        loss = loss_fn(outputs, batch["label"].to(device))
        if teacher is None:
            return loss
        full_resolution = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        soft = distillation_loss(full_resolution, teacher.probabilities(images))
        return (1.0 - distill_weight) * loss + distill_weight * soft


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _manifest(cfg: TrainConfig, ctx: DistContext, n_train: int, n_val: int, steps: int, seconds: float,
              metrics: dict[str, float] | None, epoch: int, init: dict[str, Any] | None,
              teacher: Teacher | None, ranges: dict[str, list[float]], averaged_epochs: int = 0) -> dict[str, Any]:
    spec = get_spec(cfg.model)
    return {
        "name": cfg.model,
        "architecture": cfg.model,
        "config": model_config(cfg.model, **cfg.overrides),
        "task": "segmentation",
        "spatial_dims": spec.spatial_dims,
        "labels": SEGMENTATION_LABELS,
        # the training studies' heart sizes and noise: inference acts on studies beyond them
        "preprocessing": {**DEFAULT_PREPROCESSING, **ranges},
        # the basal-RV trim helps the 2D networks measured and costs the 3D ones (docs/medsegrwkv.md)
        "postprocessing": {"trim_basal_rv": spec.spatial_dims == 2},
        "training": {
            "data": str(cfg.data),
            "split": f"patients with number % 20 in {list(VALIDATION_RESIDUES)} -> validation"
            if cfg.patients == "train" else "every patient, the validation patients included (no validation)",
            "train_volumes": n_train, "validation_volumes": n_val, "epochs_completed": epoch,
            "optimizer_steps": steps, "batch_size": cfg.batch_size * ctx.world_size, "lr": cfg.lr,
            "weight_decay": cfg.weight_decay, "crop": list(spec.roi_size) if spec.spatial_dims == 3 else cfg.crop,
            "patients": cfg.patients, "augmentation": cfg.augmentation, "dice": cfg.dice,
            **({"hard_slices": cfg.hard_slices} if cfg.hard_slices else {}),
            **({"weight_average": {"from_epoch": cfg.average_from, "epochs_averaged": averaged_epochs}}
               if averaged_epochs else {}),
            "seed": cfg.seed, "device": str(ctx.device),
            "processes": ctx.world_size, "wall_time_s": round(seconds, 1),
            "torch": torch.__version__,
            **({"init": init} if init else {}),
            **({"teacher": {**teacher.describe(), "distill_weight": cfg.distill_weight}} if teacher else {}),
        },
        "licence": ACDC_LICENCE,
        "metrics": {"validation": metrics} if metrics else {},
    }


def load_initial_weights(cfg: TrainConfig, model: torch.nn.Module) -> dict[str, Any]:
    """Copy `cfg.init`'s weights into `model` (same architecture, same config) and return what they were, for
    the manifest: fine-tuned weights say what they grew from."""
    from medsegrwkv.weights.store import load_model

    start, manifest = load_model(cfg.init, "cpu")
    wanted = json.loads(json.dumps(model_config(cfg.model, **cfg.overrides)))  # tuples as the manifest's lists

    def inference_config(config: dict[str, Any]) -> dict[str, Any]:
        """What must match: all but training-only keys and the slice context the weights may grow to."""
        grows = slice_context(cfg.model, wanted) > 0 and slice_context(cfg.model, manifest.get("config", {})) == 0
        return {key: value for key, value in config.items()
                if key not in TRAINING_ONLY_CONFIG and not (grows and key == "in_channels")}

    if manifest["architecture"] != cfg.model or inference_config(manifest.get("config", {})) != inference_config(wanted):
        raise MedSegError(f"--init weights {cfg.init} are a {manifest['architecture']} model with config "
                          f"{manifest.get('config')}, not {cfg.model} with config {wanted}.",
                          code=ErrorCode.BAD_WEIGHTS)
    # Training-only parts (deep supervision's coarse heads) may be added (fresh) or dropped; nothing else.
    missing, unexpected = model.load_state_dict(with_neighbour_channels(start.state_dict(), model), strict=False)
    assert all(key.startswith(TRAINING_ONLY_PREFIXES) for key in (*missing, *unexpected)), (missing, unexpected)
    training, validation = manifest.get("training", {}), manifest.get("metrics", {}).get("validation", {})
    return {"weights": cfg.init, "sha256": manifest.get("sha256"), "epochs_completed": training.get("epochs_completed"),
            "mean_dice": validation.get("mean_dice"), "device": training.get("device"), "note": training.get("note")}


def train_segmentation(cfg: TrainConfig, show_progress: bool = True) -> dict[str, Any]:
    """Train (or resume) and return {"best": validation summary or None, "best_epoch", "steps", "loss": last
    epoch's mean, "model": the trained network (this rank's replica), "config"}."""
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, show_progress and ctx.is_main)
    finally:
        shutdown(ctx)


def _train(cfg: TrainConfig, ctx: DistContext, show: bool) -> dict[str, Any]:
    spec = get_spec(cfg.model)
    if cfg.hard_slices > 0 and ctx.enabled:
        raise MedSegError("--hard-slices draws the slices in one process; train without torchrun.",
                          code=ErrorCode.BAD_ARGUMENT)
    if spec.task != "segmentation":
        raise MedSegError(f"Model '{cfg.model}' is a {spec.task} model; `train` trains segmentation models.",
                          code=ErrorCode.WRONG_TASK)
    _seed_everything(cfg.seed + ctx.rank)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = create_model(cfg.model, **cfg.overrides)
    # before anything is written: wrong starting weights leave no run folder behind
    init = load_initial_weights(cfg, model) if cfg.init else None
    teacher = Teacher(cfg.teacher, ctx.device, cfg.model, cfg.overrides, cfg.teacher_tta) if cfg.teacher else None
    model = model.to(ctx.device)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    train_cases = list_cases(cfg.data, cfg.patients)[: cfg.max_cases]
    val_cases = list_cases(cfg.data, "val") if cfg.validate else []
    crop = tuple(spec.roi_size) if spec.spatial_dims == 3 else (cfg.crop, cfg.crop)
    volumes = load_volumes(train_cases, show_progress=show)
    pixel = DEFAULT_PREPROCESSING["spacing_xy_mm"]
    ranges = {key: value for key, value in (
        ("heart_size_mm", training_range_mm([v["label"] for v in volumes], pixel[0] * pixel[1])),
        ("noise_sigma", training_noise_range([v["image"] for v in volumes]))) if value}
    dataset = training_dataset(volumes, spec.spatial_dims, crop, slice_context(cfg.model, cfg.overrides),
                               cfg.augmentation)
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed) if ctx.enabled else None
    if cfg.hard_slices > 0:
        deficits = slice_deficits(Segmenter(model, {"architecture": cfg.model, "config": cfg.overrides}, ctx.device),
                                  volumes, show)
        sampler = hard_slice_sampler(sampling_weights(deficits, cfg.hard_slices), cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.workers, drop_last=len(dataset) >= cfg.batch_size * ctx.world_size)

    net = DistributedDataParallel(model) if ctx.enabled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, cfg.epochs, max(1, len(loader)), cfg.warmup_epochs, cfg.average_from)
    loss_fn = segmentation_loss(cfg.dice)
    averaged = AveragedModel(model, use_buffers=True) if cfg.average_from else None

    run = RunFolder(out, config=cfg)
    state = run.resume(model, optimizer, scheduler, ctx.device, announce=show, averaged=averaged)
    last_loss = math.nan
    started = time.time() - state["seconds"]
    stop = False
    for epoch in range(state["epoch"], cfg.epochs):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        net.train()

        def compute_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return batch_loss(net, batch, ctx.device, loss_fn, teacher, cfg.distill_weight)

        losses, stop = train_epoch(loader, compute_loss, model, optimizer, scheduler, state, 12.0, cfg.max_steps,
                                   f"epoch {epoch + 1}/{cfg.epochs}", show)
        last_loss = float(np.mean(losses)) if losses else math.nan
        if averaged is not None and epoch + 1 >= cfg.average_from:
            averaged.update_parameters(model)
        averaged_epochs = int(averaged.n_averaged) if averaged is not None else 0
        exported = averaged.module if averaged_epochs else model  # the network this epoch validates and exports
        state["epoch"] = epoch + 1
        state["seconds"] = time.time() - started
        record: dict[str, Any] = {"epoch": epoch + 1, "step": state["step"], "loss": last_loss,
                                  "lr": scheduler.get_last_lr()[0], "seconds": round(state["seconds"], 1)}
        validate_now = cfg.validate and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs or stop)
        if ctx.is_main:
            if validate_now:
                manifest = _manifest(cfg, ctx, len(train_cases), len(val_cases), state["step"], state["seconds"],
                                     None, epoch + 1, init, teacher, ranges, averaged_epochs)
                _, summary = evaluate_cases(Segmenter(exported, manifest, ctx.device), val_cases, show_progress=False)
                record["validation"] = summary
                if averaged_epochs:  # the last weights alone too: what the average adds is measured in every run
                    _, record["validation_last_weights"] = evaluate_cases(Segmenter(model, manifest, ctx.device),
                                                                          val_cases, show_progress=False)
                model.train()
                if state["best"] is None or summary["mean_dice"] > state["best"]["mean_dice"]:
                    state["best"], state["best_epoch"] = summary, epoch + 1
                    manifest["metrics"] = {"validation": {**summary, "epoch": epoch + 1,
                                                          "volumes": len(val_cases)}}
                    export_weights(exported, manifest, out / "weights", render_segmentation_card)
            elif not cfg.validate:
                export_weights(exported, _manifest(cfg, ctx, len(train_cases), 0, state["step"], state["seconds"],
                                                   None, epoch + 1, init, teacher, ranges, averaged_epochs),
                               out / "weights", render_segmentation_card)
            run.save(model, optimizer, scheduler, state, record, averaged)
            if show:
                val = record.get("validation")
                tqdm.write(f"epoch {epoch + 1}: loss {last_loss:.4f}"
                           + (f", validation mean Dice {val['mean_dice']:.4f} (RV {val['RV_dice']:.3f}, "
                              f"Myo {val['Myo_dice']:.3f}, LV {val['LV_dice']:.3f})" if val else ""))
        barrier(ctx)
        if stop:
            break
    return {"best": state["best"], "best_epoch": state["best_epoch"], "steps": state["step"], "loss": last_loss,
            "model": model, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}
