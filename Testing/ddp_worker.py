"""Run by test_training under torchrun: a few DDP steps, then each rank writes its parameters' digest."""

import hashlib
import os
import sys
from pathlib import Path

import torch

from medsegrwkv.nets import create_model
from medsegrwkv.training.segmentation import TrainConfig, train_segmentation


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().to(torch.float64).numpy().tobytes())
    return h.hexdigest()


data, out = Path(sys.argv[1]), Path(sys.argv[2])
result = train_segmentation(TrainConfig(data=data, output=out, epochs=1, max_steps=3, max_cases=2, batch_size=2,
                                        crop=64, validate=False, device="cpu"), show_progress=False)
torch.manual_seed(0)  # the trainer's initialisation (seed 0), to check that training moved the weights
initial = digest(create_model("unet2d"))
(out / f"rank{os.environ['RANK']}.sha256").write_text(f"{digest(result['model'])} {result['steps']} {initial}")
