"""`medsegrwkv train refine`: the click-refinement network.

Training samples follow the DeepGrow/DeepEdit recipe on augmented ACDC slices: pick a structure
present on the slice; start from the automatic segmentation (`automatic`, by default the starting
segmentation weights, run on the same augmented slice) or from an empty mask with one positive click; then let the network
itself refine for 0..`click_rounds` rounds, each followed by a simulated click in its largest
error, and train on the last state. The refinement network starts from the segmentation
network's weights (the image channel's filters copied, the new channels' filters zero), so it
begins as a segmenter and learns to use the mask and clicks.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader
from monai.losses import DiceCELoss
from tqdm import tqdm

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.inference.device import resolve_device
from medsegrwkv.interactive.clicks import Click, changes_near_clicks, next_click
from medsegrwkv.interactive.refiner import STRUCTURES, Refiner, refinement_input
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.nets.registry import create_model, get_spec, model_config
from medsegrwkv.preprocess import DEFAULT_PREPROCESSING
from medsegrwkv.training.acdc import VALIDATION_RESIDUES, list_cases
from medsegrwkv.training.loop import RunFolder, export_weights, train_epoch
from medsegrwkv.training.click_evaluation import evaluate_clicks
from medsegrwkv.preprocess.noise import training_noise_range
from medsegrwkv.training.data import check_augmentation, load_volumes, training_dataset
from medsegrwkv.training.schedule import warmup_cosine
from medsegrwkv.weights.manifest import ACDC_LICENCE, SEGMENTATION_LABELS
from medsegrwkv.weights.model_card import render_refinement_card
from medsegrwkv.weights.store import load_model


@dataclass
class RefineTrainConfig:
    data: Path
    output: Path
    model: str = "unet2d-refine"
    # starting weights: segmentation weights of the same architecture family as `model` (not the default
    # segmenter, which may be another network), or refinement weights to fine-tune
    init: str = "unet2d"
    # segmentation weights whose predictions the simulated clicks correct (default: `init`), e.g. the
    # default segmenter, so that the refiner learns to correct the masks users will see
    automatic: str | None = None
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    crop: int = 128
    augmentation: str = "wide"  # training.data.AUGMENTATIONS
    click_rounds: int = 3  # simulated refine-and-click rounds before the trained step: 0..this many
    p_automatic: float = 0.6  # share of samples that start from the automatic prediction
    val_every: int = 5
    val_cases: int = 10  # validation volumes (clicks are slow); `medsegrwkv evaluate-clicks` does all
    device: str = "auto"
    seed: int = 0
    max_cases: int | None = None
    max_steps: int | None = None

    def __post_init__(self) -> None:
        check_augmentation(self.augmentation)  # before anything is loaded or written


def transfer_weights(source: dict[str, torch.Tensor], model: torch.nn.Module) -> int:
    """Copy every same-shaped tensor; a layer that gained input channels gets the source filters on
    its first channel(s) and zeros on the new ones. Returns how many tensors were transferred."""
    target = model.state_dict()
    done = 0
    for key, value in source.items():
        if key not in target:
            continue
        t = target[key]
        if t.shape == value.shape:
            target[key] = value.clone()
        elif t.ndim == value.ndim >= 3 and t.shape[0] == value.shape[0] and t.shape[2:] == value.shape[2:] \
                and t.shape[1] > value.shape[1]:
            target[key] = torch.zeros_like(t)
            target[key][:, : value.shape[1]] = value
        else:
            continue
        done += 1
    model.load_state_dict(target)
    return done


class ClickSimulator:
    """Turns a batch of labelled slices into refinement inputs, as a user would have left them."""

    def __init__(self, cfg: RefineTrainConfig, segmenter: torch.nn.Module, rng: np.random.Generator) -> None:
        self.cfg, self.segmenter, self.rng = cfg, segmenter, rng

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs (B, C, H, W), binary targets (B, 1, H, W)) on the images' device."""
        device = images.device
        automatic = self.segmenter(images).argmax(1).cpu().numpy()
        image_np, label_np = images[:, 0].cpu().numpy(), labels[:, 0].cpu().numpy()
        states = []
        for img, lab, auto in zip(image_np, label_np, automatic):
            present = [v for v in STRUCTURES if (lab == v).any()]
            value = int(self.rng.choice(present or list(STRUCTURES)))
            truth = lab == value
            if self.rng.random() < self.cfg.p_automatic:
                mask, clicks = auto == value, []
                if self.rng.random() < 0.8:  # now and then learn to keep a good mask without clicks
                    self._add_click(clicks, mask, truth)
            else:
                mask, clicks = np.zeros_like(truth), []
                self._add_click(clicks, mask, truth)
            states.append([img, mask, clicks, value, truth])
        rounds = int(self.rng.integers(0, self.cfg.click_rounds + 1))
        was_training = model.training
        model.eval()
        for _ in range(rounds):
            x = torch.from_numpy(self._inputs(states)).to(device)
            masks = (torch.softmax(model(x).float(), 1)[:, 1] > 0.5).cpu().numpy()
            for state, proposal in zip(states, masks):  # the deployed rule: only regions a click touches change
                state[1] = np.where(changes_near_clicks(state[1], proposal, state[2]), proposal, state[1])
                self._add_click(state[2], state[1], state[4])
        model.train(was_training)
        targets = np.stack([s[4] for s in states])[:, None].astype(np.int64)
        return torch.from_numpy(self._inputs(states)).to(device), torch.from_numpy(targets).to(device)

    def _add_click(self, clicks: list[Click], mask: np.ndarray, truth: np.ndarray) -> None:
        click = next_click(mask, truth, self.rng)
        if click is not None:
            clicks.append(click)

    @staticmethod
    def _inputs(states: list[list[Any]]) -> np.ndarray:
        return np.stack([refinement_input(img, mask, clicks, value) for img, mask, clicks, value, _ in states])


def _manifest(cfg: RefineTrainConfig, state: dict[str, Any], n_train: int, metrics: dict[str, Any] | None,
              noise: list[float] | None) -> dict[str, Any]:
    return {
        "name": cfg.model, "architecture": cfg.model, "config": model_config(cfg.model), "task": "refinement",
        "spatial_dims": 2, "labels": SEGMENTATION_LABELS,
        # the training studies' noise: a noisier image is smoothed first, as for segmentation (preprocess.noise)
        "preprocessing": {**DEFAULT_PREPROCESSING, **({"noise_sigma": noise} if noise else {})},
        "training": {
            "data": str(cfg.data), "split": f"patients with number % 20 in {list(VALIDATION_RESIDUES)} -> validation",
            "train_volumes": n_train, "init": cfg.init, "automatic": cfg.automatic or cfg.init,
            "epochs_completed": state["epoch"],
            "optimizer_steps": state["step"], "batch_size": cfg.batch_size, "lr": cfg.lr, "crop": cfg.crop,
            "augmentation": cfg.augmentation, "click_rounds": cfg.click_rounds, "p_automatic": cfg.p_automatic, "seed": cfg.seed,
            "wall_time_s": round(state["seconds"], 1), "torch": torch.__version__,
        },
        "licence": ACDC_LICENCE,
        "metrics": {"validation_clicks": metrics} if metrics else {},
    }


def train_refinement(cfg: RefineTrainConfig, show_progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the refinement network; returns {"best", "best_epoch", "steps", "loss", "model"}."""
    if get_spec(cfg.model).task != "refinement":
        raise MedSegError(f"Model '{cfg.model}' is not a refinement model (see `medsegrwkv models`).",
                          code=ErrorCode.WRONG_TASK)
    device = resolve_device(cfg.device)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    start_net, start_manifest = load_model(cfg.init, device)
    start_task = start_manifest.get("task", "segmentation")
    if start_task not in ("segmentation", "refinement") or (start_task == "refinement" and not cfg.automatic):
        raise MedSegError(f"--init {cfg.init} is a {start_task} model: start from segmentation weights, or from "
                          "refinement weights with --automatic segmentation weights for the masks the clicks correct.",
                          code=ErrorCode.WRONG_TASK)
    segmenter_net, seg_manifest = load_model(cfg.automatic, device) if cfg.automatic else (start_net, start_manifest)
    if seg_manifest.get("task", "segmentation") != "segmentation":
        raise MedSegError(f"--automatic {cfg.automatic} is not a segmentation model.", code=ErrorCode.WRONG_TASK)
    for p in segmenter_net.parameters():
        p.requires_grad_(False)
    train_cases = list_cases(cfg.data, "train")[: cfg.max_cases]
    val_cases = list_cases(cfg.data, "val")[: cfg.val_cases] if cfg.val_cases else []
    volumes = load_volumes(train_cases, show_progress=show_progress)
    noise = training_noise_range([v["image"] for v in volumes])
    dataset = training_dataset(volumes, 2, (cfg.crop, cfg.crop), strength=cfg.augmentation)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=len(dataset) >= cfg.batch_size)

    model = create_model(cfg.model).to(device)
    transfer_weights(start_net.state_dict(), model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, cfg.epochs, max(1, len(loader)), cfg.warmup_epochs)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    run = RunFolder(Path(cfg.output), config=cfg)
    state = run.resume(model, optimizer, scheduler, device, announce=show_progress)
    simulate = ClickSimulator(cfg, segmenter_net.eval(), rng)
    evaluator = Segmenter(segmenter_net, seg_manifest, device)
    started = time.time() - state["seconds"]
    last_loss, stop = math.nan, False
    for epoch in range(state["epoch"], cfg.epochs):
        model.train()

        def compute_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            x, y = simulate(model, batch["image"].to(device), batch["label"].to(device))
            return loss_fn(model(x), y)

        losses, stop = train_epoch(loader, compute_loss, model, optimizer, scheduler, state, 12.0, cfg.max_steps,
                                   f"epoch {epoch + 1}/{cfg.epochs}", show_progress)
        last_loss = float(np.mean(losses)) if losses else math.nan
        state["epoch"], state["seconds"] = epoch + 1, time.time() - started
        record: dict[str, Any] = {"epoch": epoch + 1, "step": state["step"], "loss": last_loss,
                                  "seconds": round(state["seconds"], 1)}
        if val_cases and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs or stop):
            manifest = _manifest(cfg, state, len(train_cases), None, noise)
            summary = evaluate_clicks(Refiner(model, manifest, device), evaluator, val_cases, max_clicks=5,
                                      show_progress=False)
            model.train()
            score = float(np.mean([row["dice_3"] for row in summary["automatic"].values()]))
            record["validation"] = {"mean_dice_3_clicks": score, **summary}
            if state["best"] is None or score > state["best"]["mean_dice_3_clicks"]:
                state["best"], state["best_epoch"] = record["validation"], epoch + 1
                manifest["metrics"] = {"validation_clicks": {**summary, "epoch": epoch + 1}}
                export_weights(model, manifest, Path(cfg.output) / "weights", render_refinement_card)
        elif not val_cases:
            export_weights(model, _manifest(cfg, state, len(train_cases), None, noise), Path(cfg.output) / "weights",
                           render_refinement_card)
        run.save(model, optimizer, scheduler, state, record)
        if show_progress:
            v = record.get("validation")
            tqdm.write(f"epoch {epoch + 1}: loss {last_loss:.4f}"
                       + (f", validation mean Dice after 3 clicks {v['mean_dice_3_clicks']:.4f}" if v else ""))
        if stop:
            break
    return {"best": state["best"], "best_epoch": state["best_epoch"], "steps": state["step"], "loss": last_loss,
            "model": model, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}
