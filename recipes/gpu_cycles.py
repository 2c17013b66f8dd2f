r"""Training cycles run side by side on one GPU machine that has PyTorch but not the project's imaging
libraries (SimpleITK, nibabel, pydicom), within a fixed wall-clock budget.

    # here: all 80 patients, prepared by the project's own preprocessing, as 8-bit images (xz)
    .venv/bin/python recipes/gpu_cycles.py prepare runs/gpu_carry
    bash recipes/gpu_carry_tree.sh out   # the peer weights out of the index, so the tree travels
    # there (MONAI carried as a wheel on PYTHONPATH): four jobs for 505 s, each its own process
    python3 recipes/gpu_cycles.py train runs/gpu_carry --budget 505 --device cuda --init medsegrwkv-t \
        --job A:seed=40,lr=3e-4,batch=32,init=runs/gpu_carry/weights_twin --job B:seed=40,lr=3e-4,batch=32,patients=all \
        --job S:seed=41,lr=2e-3,batch=32,model=medsegrwkv-s,init=none --job T:seed=41,lr=2e-3,batch=32,init=none

Every job runs the project's trainer (`training.segmentation`: medsegrwkv-t from --init on the
training split, mild augmentation and lr 6e-4 unless the job says otherwise, batch 16, crop 160, no
validation there) on the prepared volumes, and sizes its cosine schedule from its own measured step
time beside the others, so that the schedule ends before the budget; `average=F` holds the rate over
the last share F of those epochs and exports the mean of their weights (`train --average-from`). Each job's weights come back as
`weights_<name>.tar` (in parts when over 15 MiB); validate them here with `medsegrwkv evaluate`.
Afterwards `bash recipes/gpu_carry_tree.sh back`. Sessions 17-19 ran this on a lent H200
(docs/medsegrwkv.md, 'Levers measured'); each default since session 18 is a `patients=all` job whose
twin on the training split (the same seed and settings) validated it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path
from unittest.mock import MagicMock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "backend"))
CACHE = "acdc_8bit.npz"  # unpacked there from CACHE.xz, which is what travels (xz: a fifth smaller than zip)
RETURN_PART = 15 * 2**20
ABSENT_THERE = ("SimpleITK", "nibabel", "pydicom", "torchio", "vtk")


class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Stands in for an imaging library that is not installed: the prepared volumes need none of them,
    but the package imports them at module level."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] not in ABSENT_THERE:
            return None
        sys.meta_path.remove(self)
        try:
            real = None if os.environ.get("GPU_CYCLES_STUB_ALL") else importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        return real or importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: MagicMock(name=attr)
        return module

    def exec_module(self, module):
        pass


def prepare(folder: Path, data: str, patients: str = "all") -> None:
    import numpy as np
    from medsegrwkv.training.acdc import list_cases
    from medsegrwkv.training.data import load_volumes

    # "all": the jobs choose the training split or every patient; "train" (34 MB instead of 46) leaves
    # room beside it for medsegrwkv-s's 18 MB of starting weights within what may travel
    cases = list_cases(data, patients)
    arrays = {}
    for case, volume in zip(cases, load_volumes(cases)):
        arrays[f"{case.name}/image"] = np.round(np.clip(volume["image"], 0, 1) * 255).astype(np.uint8)
        arrays[f"{case.name}/label"] = volume["label"]
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (folder / f"{CACHE}.xz").write_bytes(lzma.compress(buffer.getvalue(), preset=9))
    print(f"{len(cases)} volumes -> {folder / CACHE}.xz")


def parse_job(text: str, init: str) -> tuple[str, dict]:
    """'A:seed=10,lr=3e-4,in_channels=3' -> ('A', {'seed': 10, 'lr': 3e-4, 'overrides': {'in_channels': 3}, ...});
    `init` (the --init default) unless the job names its own: a registered name, a weights folder, or none."""
    name, _, spec = text.partition(":")
    job: dict = {"seed": 0, "lr": 6e-4, "patients": "train", "augmentation": "mild", "model": "medsegrwkv-t",
                 "batch": 16, "init": init, "teacher": None, "teacher_tta": False, "distill": 0.5, "dice": "sample",
                 "average": 0.0, "overrides": {}}
    for item in filter(None, spec.split(",")):
        key, value = item.split("=")
        if key in ("seed", "batch"):
            job[key] = int(value)
        elif key in ("lr", "distill", "average"):
            job[key] = float(value)
        elif key == "teacher_tta":
            job[key] = bool(int(value))
        elif key in ("patients", "augmentation", "model", "init", "teacher", "dice"):
            job[key] = value
        else:
            job["overrides"][key] = bool(int(value)) if key == "deep_supervision" else int(value)
    if not 0.0 <= job["average"] < 1.0:
        raise SystemExit(f"[{name}] average={job['average']}: give the share of the epochs to average, 0 to 1.")
    if job["init"] == "none":
        job["init"] = None  # from random weights
    return name, job


def average_from(epochs: int, share: float) -> int | None:
    """The first epoch whose weights join the average when the last `share` of `epochs` are averaged
    (at least the last epoch); None when nothing is averaged."""
    return epochs - max(1, round(share * epochs)) + 1 if share else None


def run_job(folder: Path, name: str, job: dict, deadline: float, device: str) -> None:
    sys.meta_path.insert(0, _Absent())
    import numpy as np
    import torch
    from monai.data import DataLoader

    from medsegrwkv.nets.registry import create_model, slice_context
    from medsegrwkv.training import segmentation
    from medsegrwkv.training.acdc import Case, in_split

    torch.set_num_threads(2)
    cache = np.load(folder / CACHE)
    names = sorted({key.split("/")[0] for key in cache.files})
    cases = [Case(n.split("_")[0], int(n[7:10]), int(n[-2:]), Path(n), Path(n), None) for n in names]
    if job["patients"] == "all" and not in_split(cases, "val"):
        raise SystemExit(f"[{name}] patients=all needs every patient, but {folder} holds the training split alone "
                         "(prepared with --patients train).")
    segmentation.list_cases = lambda root, split="all": in_split(cases, split)
    segmentation.load_volumes = lambda chosen, preprocessing=None, show_progress=True: [
        {"image": cache[f"{c.name}/image"].astype(np.float32) / 255.0, "label": cache[f"{c.name}/label"]}
        for c in chosen]

    cfg = segmentation.TrainConfig(
        data=folder, output=folder / "runs" / name, model=job["model"], batch_size=job["batch"], lr=job["lr"], crop=160,
        augmentation=job["augmentation"], device=device, seed=job["seed"], workers=3, validate=False,
        patients=job["patients"], overrides=job["overrides"], init=job["init"], teacher=job["teacher"],
        teacher_tta=job["teacher_tta"], distill_weight=job["distill"], dice=job["dice"],
        max_steps=int(os.environ.get("GPU_CYCLES_MAX_STEPS", 0)) or None)

    # this job's step time beside the others, on real augmented batches of the run's own settings
    dev = torch.device(device)
    dataset = segmentation.training_dataset(
        segmentation.load_volumes(segmentation.list_cases(folder, cfg.patients)), 2, (cfg.crop, cfg.crop),
        slice_context(cfg.model, cfg.overrides), cfg.augmentation)
    batches = iter(DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                              drop_last=True))
    net = create_model(cfg.model, **cfg.overrides).to(dev)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)
    loss_fn = segmentation.segmentation_loss(cfg.dice)
    teacher = segmentation.Teacher(cfg.teacher, dev, cfg.model, cfg.overrides, cfg.teacher_tta) if cfg.teacher else None
    steps, warm = int(os.environ.get("GPU_CYCLES_TIME_STEPS", 30)), 8
    for i in range(steps):
        if i == min(warm, steps // 2):
            torch.cuda.synchronize() if dev.type == "cuda" else None
            started = time.time()
        loss = segmentation.batch_loss(net, next(batches), dev, loss_fn, teacher, cfg.distill_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize() if dev.type == "cuda" else None
    step = (time.time() - started) / (steps - min(warm, steps // 2))
    del net, optimizer, batches, teacher
    per_epoch = len(dataset) // cfg.batch_size
    left = deadline - time.time() - 30
    epochs = max(1, int(left / (per_epoch * step * 1.05 + 1.0)))
    print(f"[{name}] {step * 1000:.0f} ms a step, {per_epoch} steps an epoch, {left:.0f} s left: {epochs} epochs",
          flush=True)
    segmentation.train_segmentation(
        dataclasses.replace(cfg, epochs=epochs, average_from=average_from(epochs, job["average"])), show_progress=False)
    print(f"[{name}] done", flush=True)


def train(args: argparse.Namespace) -> None:
    out = Path(os.environ.get("OUT", args.folder / "out"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    deadline = started + args.budget
    if not (args.folder / CACHE).is_file():
        (args.folder / CACHE).write_bytes(lzma.decompress((args.folder / f"{CACHE}.xz").read_bytes()))
    jobs = dict(parse_job(text, args.init) for text in args.job)
    procs = {}
    for name, job in jobs.items():
        log = open(args.folder / f"job_{name}.log", "w")
        procs[name] = subprocess.Popen(
            [sys.executable, __file__, "job", str(args.folder), name, json.dumps(job), str(deadline), args.device],
            stdout=log, stderr=subprocess.STDOUT)

    def epochs_done(name: str) -> int:
        history = args.folder / "runs" / name / "history.jsonl"
        return len(history.read_text().splitlines()) if history.is_file() else 0

    while any(p.poll() is None for p in procs.values()) and time.time() < deadline + 45:
        time.sleep(10)
        print(f"{time.time() - started:.0f} s, epochs:", {name: epochs_done(name) for name in procs}, flush=True)
    failed = [name for name, proc in procs.items() if proc.poll() not in (None, 0)]
    for name, proc in procs.items():
        if proc.poll() is None:
            print(f"[{name}] still running after the budget: stopped; its last epoch's weights are kept", flush=True)
            proc.kill()
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for name in procs:
            tar.add(args.folder / f"job_{name}.log", arcname=f"job_{name}.log")
            run = args.folder / "runs" / name
            if (run / "weights").is_dir():
                with tarfile.open(out / f"weights_{name}.tar", "w") as weights:
                    weights.add(run / "weights", arcname=f"weights_{name}")
                split_for_return(out / f"weights_{name}.tar")
                tar.add(run / "history.jsonl", arcname=f"history_{name}.jsonl")
    for name in failed:
        lines = (args.folder / f"job_{name}.log").read_text().strip().splitlines()
        print(f"[{name}] failed: {lines[-1] if lines else 'no output'}", file=sys.stderr)
    if failed:
        sys.exit(1)


def split_for_return(path: Path) -> None:
    """A file over RETURN_PART bytes (medsegrwkv-s's weights: 18 MB) becomes `NAME.partK` files, since
    a file larger than 16 MiB does not come back from the device machine; here `cat NAME.part* > NAME`."""
    data = path.read_bytes()
    if len(data) <= RETURN_PART:
        return
    for k, start in enumerate(range(0, len(data), RETURN_PART)):
        path.with_name(f"{path.name}.part{k}").write_bytes(data[start:start + RETURN_PART])
    path.unlink()


def main() -> None:
    if sys.argv[1:2] == ["job"]:
        folder, name, job, deadline, device = sys.argv[2:7]
        run_job(Path(folder), name, json.loads(job), float(deadline), device)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write every patient, prepared, into FOLDER (here)")
    p.add_argument("folder", type=Path)
    p.add_argument("--data", default="../shared/data/acdc")
    p.add_argument("--patients", choices=("all", "train"), default="all",
                   help="every patient (default), or the training split alone: smaller, for jobs that need no twin")
    t = sub.add_parser("train", help="run the jobs on the prepared split in FOLDER (there)")
    t.add_argument("folder", type=Path)
    t.add_argument("--budget", type=float, required=True, help="seconds until every schedule must have ended")
    t.add_argument("--device", default="cuda")
    t.add_argument("--init", default="medsegrwkv-t",
                   help="starting weights of the jobs that name none: a registered name, a folder, or none")
    t.add_argument("--job", action="append", required=True,
                   help="NAME:seed=N[,lr=X][,batch=N][,patients=all][,augmentation=wide|appearance|geometry][,model=medsegrwkv-s]"
                        "[,init=FOLDER|none][,teacher=FOLDER|NAME][,teacher_tta=1][,distill=0.5][,dice=batch]"
                        "[,average=0.3][,in_channels=3][,deep_supervision=1]; one process each (default: "
                        "medsegrwkv-t from --init on the training split, mild augmentation, lr 6e-4, batch 16)")
    args = parser.parse_args()
    prepare(args.folder, args.data, args.patients) if args.command == "prepare" else train(args)


if __name__ == "__main__":
    main()
