"""What every trainer shares: the epoch loop and its optimiser step; the run folder, with
`checkpoint.pt` (model, optimiser, schedule and loop state, replaced atomically each epoch,
resumed automatically) and `history.jsonl` (one line per epoch); and the weights export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm


def export_weights(model: torch.nn.Module, manifest: dict[str, Any], folder: Path,
                   render_card: Callable[[dict[str, Any], int, float], str]) -> None:
    """Weights folder = safetensors + manifest + a model card rendered from that manifest."""
    from medsegrwkv.weights.store import load_manifest, save_weights

    save_weights(model, manifest, folder)
    _write_card(folder, load_manifest(folder) or manifest, render_card)


def record_validation(folder: Path, summary: dict[str, float], volumes: int,
                      render_card: Callable[[dict[str, Any], int, float], str], source: str | None = None) -> None:
    """Store a validation summary in a weights folder's manifest (checksum kept) and re-render its card:
    for weights trained without validation, e.g. on a machine that only had the prepared training data.
    `source`: the summary is another run's, the recipe's (for weights trained on every patient), as it says."""
    from medsegrwkv.weights.store import load_manifest, save_manifest

    manifest = load_manifest(folder)
    training = manifest.setdefault("training", {})
    # weights the run chose by its own validation (the trainer writes no "selection") keep that epoch;
    # the rest are the last epoch's
    previous = manifest.get("metrics", {}).get("validation", {})
    chosen_by_run = source is None and bool(previous) and "selection" not in previous
    epoch = previous.get("epoch") if chosen_by_run else training.get("epochs_completed")
    if source is None:
        training["validation_volumes"] = volumes
    manifest.setdefault("metrics", {})["validation"] = {**summary, "epoch": epoch, "volumes": volumes,
                                                         **({} if chosen_by_run else {"selection": "final epoch"}),
                                                         **({"source": source} if source else {})}
    save_manifest(folder, manifest)
    _write_card(folder, manifest, render_card)


def record_comparison(folder: Path, title: str, rows: list[dict[str, Any]],
                      render_card: Callable[[dict[str, Any], int, float], str]) -> None:
    """Store `medsegrwkv compare` rows under `title` in a weights folder's manifest (a table with the same
    title is replaced) and re-render its card, so the card's evidence is made by a command, not by hand."""
    from medsegrwkv.weights.store import load_manifest, save_manifest

    manifest = load_manifest(folder)
    kept = [c for c in manifest.get("comparisons", []) if c["title"] != title]
    manifest["comparisons"] = [*kept, {"title": title, "rows": rows}]
    save_manifest(folder, manifest)
    _write_card(folder, manifest, render_card)


def _write_card(folder: Path, manifest: dict[str, Any], render_card: Callable[[dict[str, Any], int, float], str]
                ) -> None:
    from medsegrwkv.io.text import write_text_atomic
    from medsegrwkv.nets.complexity import complexity

    size = complexity(manifest["architecture"], manifest.get("config"))
    write_text_atomic(Path(folder) / "MODEL_CARD.md",
                      render_card(manifest, int(size["params"]), float(size["gflops"])))


def new_state() -> dict[str, Any]:
    return {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "seconds": 0.0}


# Settings a resumed run may change: the length of the schedule and its time budget, where and how it
# runs. Any other difference (model, learning rate, batch size, crop, overrides, seed, ...) would
# silently mix two recipes in one checkpoint, so it stops the run instead.
RESUMABLE_CHANGES = frozenset({"output", "data", "sunnybrook", "cmrxmotion", "epochs", "max_minutes", "val_every",
                               "device", "workers", "max_steps", "validate", "val_cases"})


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class RunFolder:
    """A run's folder: `config.json` (the settings it was started with), `checkpoint.pt`, `history.jsonl`."""

    def __init__(self, folder: Path, config: Any = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.folder / "checkpoint.pt"
        if config is not None:
            self._check_config(_plain(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config))

    def _check_config(self, config: dict[str, Any]) -> None:
        """Save the run's settings; on resume, refuse settings that differ from the saved ones."""
        from medsegrwkv.errors import ErrorCode, MedSegError
        from medsegrwkv.io.text import write_text_atomic

        path = self.folder / "config.json"
        if path.is_file() and self.checkpoint.is_file():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                raise MedSegError(f"{path} is damaged; restore it or train into a new --output.",
                                  code=ErrorCode.BAD_ARGUMENT) from None
            changed = [f"{key}={saved.get(key)!r} (now {config.get(key)!r})" for key in sorted(set(saved) | set(config))
                       if key not in RESUMABLE_CHANGES and saved.get(key) != config.get(key)]
            if changed:
                raise MedSegError(f"The run in {self.folder} was started with {', '.join(changed)}; resume it with "
                                  "the same settings (only the epochs, validation and device may change) or train "
                                  "into a new --output.", code=ErrorCode.BAD_ARGUMENT)
        write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               device: torch.device, announce: bool = True, averaged: AveragedModel | None = None) -> dict[str, Any]:
        """The loop state to continue from, loading the checkpoint's weights and optimiser when there is one
        (and the running weight average, once the run has started one)."""
        state = new_state()
        if self.checkpoint.is_file():
            saved = torch.load(self.checkpoint, map_location=device, weights_only=True)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            if averaged is not None:  # a run with averaging saves its average in every checkpoint
                averaged.load_state_dict(saved["averaged"])
            state.update(json.loads(saved["state"]))
            if announce:
                tqdm.write(f"resumed from {self.checkpoint} at epoch {state['epoch']}")
        return state

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             state: dict[str, Any], record: dict[str, Any], averaged: AveragedModel | None = None) -> None:
        """Checkpoint (atomically, loaded back before the rename) and append the epoch's record to history.jsonl."""
        from medsegrwkv.io.atomic import write_atomic

        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "state": json.dumps(state),
                      **({"averaged": averaged.state_dict()} if averaged is not None else {})}
        write_atomic(self.checkpoint, lambda tmp: torch.save(checkpoint, tmp),
                     lambda tmp: torch.load(tmp, map_location="cpu", weights_only=True))
        with open(self.folder / "history.jsonl", "a") as history:
            history.write(json.dumps(record) + "\n")


def optimiser_step(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   state: dict[str, Any], max_grad_norm: float) -> float:
    """Backward, gradient clipping, optimiser and schedule step; counts the step in `state`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    state["step"] += 1
    return loss.item()


def train_epoch(batches: Iterable[Any], compute_loss: Callable[[Any], torch.Tensor], model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any], max_grad_norm: float,
                max_steps: int | None, desc: str, show: bool) -> tuple[list[float], bool]:
    """One pass with a progress bar: (the batches' losses, whether `max_steps` was reached)."""
    losses: list[float] = []
    bar = tqdm(batches, desc=desc, unit="batch", disable=not show, leave=False)
    for batch in bar:
        losses.append(optimiser_step(compute_loss(batch), model, optimizer, scheduler, state, max_grad_norm))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if max_steps is not None and state["step"] >= max_steps:
            return losses, True
    return losses, False
