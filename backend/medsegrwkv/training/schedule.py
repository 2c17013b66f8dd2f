"""The learning-rate schedule every trainer uses: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int,
                  warmup_epochs: int, hold_from_epoch: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimiser step. Rebuilt from the run's epoch budget on resume, so a run
    resumed with a new `epochs` continues on the new schedule. `hold_from_epoch` (1-based): from that
    epoch on the rate stays where the cosine had brought it, the constant phase of weight averaging."""
    total = epochs * steps_per_epoch
    warmup = warmup_epochs * steps_per_epoch
    held = total if hold_from_epoch is None else (hold_from_epoch - 1) * steps_per_epoch

    def factor(step: int) -> float:
        step = min(step, held)
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
