"""Segment a cohort: every study of a list or folder, each rank of a torchrun job taking its share.

Sharding is static and needs no scheduler: all ranks read the same list, number the studies the
same way, and rank r of W takes studies r, r + W, r + 2W, ... (torchrun sets RANK, WORLD_SIZE and
LOCAL_RANK; without torchrun the job is rank 0 of 1). Each study gets a folder under the output
with its labelmap (and function.json), and a `record.json` written last: a study with a finished
record for the same input and model is skipped, so a stopped run resumes where it stopped. A
study that fails is recorded with its one-sentence reason and the run goes on. When every rank is
done (a gloo barrier), rank 0 writes `summary.csv`, one row per study.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch

from medsegrwkv.errors import ErrorCode, MedSegError
from medsegrwkv.function.study import study_function
from medsegrwkv.inference.device import describe_device, resolve_device
from medsegrwkv.inference.segmenter import Segmenter
from medsegrwkv.inference.study import segment_study
from medsegrwkv.io import (
    SUPPORTED_SUFFIXES, is_multiframe_dicom, read_study, select_phases, volume_suffix, write_labelmap,
)
from medsegrwkv.io.text import rows_csv, write_text_atomic

LIST_SUFFIXES = (".txt", ".lst", ".list")
RECORD = "record.json"
SUMMARY = "summary.csv"
LABELMAP = "labels.nii.gz"
FUNCTION = "function.json"
BARRIER_TIMEOUT = timedelta(days=7)  # ranks wait for the slowest share, however long the cohort


@dataclass(frozen=True)
class CohortRank:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environment(cls) -> "CohortRank":
        def number(name: str, default: int) -> int:
            try:
                return int(os.environ.get(name, default))
            except ValueError:
                raise MedSegError(f"The environment variable {name}={os.environ[name]!r} is not a number.",
                                  code=ErrorCode.BAD_ARGUMENT) from None

        world = number("WORLD_SIZE", 1)
        return cls(number("RANK", 0), world, number("LOCAL_RANK", 0), number("LOCAL_WORLD_SIZE", world))

    def share(self, count: int) -> list[int]:
        return list(range(self.rank, count, self.world_size))

    def device(self, choice: str) -> torch.device:
        """The device of this rank: its own GPU (LOCAL_RANK) when the choice resolves to CUDA."""
        device = resolve_device(choice)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return device


def list_studies(source: str | Path) -> list[Path]:
    """The studies of a cohort: the lines of a list file (.txt/.lst/.list; blank lines and `#`
    comments skipped; relative paths are relative to the list's folder), or the entries of a
    folder (every image file in it, every enhanced multi-frame DICOM file, and every subfolder,
    e.g. one DICOM series per subfolder)."""
    source = Path(source).expanduser()
    if source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        lines = [line.strip() for line in source.read_text(errors="replace").splitlines()]
        studies = [Path(line).expanduser() for line in lines if line and not line.startswith("#")]
        studies = [s if s.is_absolute() else (source.parent / s).absolute() for s in studies]
    elif source.is_dir():
        studies = sorted(p.absolute() for p in source.iterdir()
                         if not p.name.startswith(".")
                         and (p.is_dir() or volume_suffix(p) is not None or is_multiframe_dicom(p)))
    else:
        raise MedSegError(f"{source} is neither a folder of studies nor a list file ({', '.join(LIST_SUFFIXES)}) "
                          "with one study path per line.", code=ErrorCode.BAD_INPUT)
    if not studies:
        raise MedSegError(f"{source} names no study (image files {', '.join(SUPPORTED_SUFFIXES)} or folders).",
                          code=ErrorCode.BAD_INPUT)
    return studies


def study_ids(studies: list[Path]) -> list[str]:
    """A folder name per study: its file name without the image suffix (or its folder name), made
    unique in list order with -2, -3, ...; every rank derives the same names."""
    ids, seen = [], {}
    for path in studies:
        suffix = volume_suffix(path)
        base = path.name[: -len(suffix)] if suffix else path.name
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or "study"
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def _finished(folder: Path, path: Path, model: str) -> bool:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return False
    return record.get("input") == str(path) and record.get("model") == model and record.get("status") == "done"


def _process(path: Path, folder: Path, segmenter: Segmenter, with_function: bool, tta: bool | None) -> dict[str, Any]:
    """Segment one study into `folder`; the fields of its record."""
    study = read_study(path)
    result = segment_study(study, select_phases(study, None), segmenter, tta=tta)
    folder.mkdir(parents=True, exist_ok=True)
    write_labelmap(result.labels, folder / LABELMAP)
    record: dict[str, Any] = {"phases": len(result.labels), "warnings": list(result.warnings)}
    rows = result.volume_rows()
    if with_function and len(result.labels) >= 2:
        measured = study_function(study, phase_labels=result.labels)  # the labels just made: no second pass
        report = {**measured.report, "model": result.model}
        write_text_atomic(folder / FUNCTION, json.dumps(report, indent=2) + "\n")
        record.update(ed_phase=report["ed_phase"], es_phase=report["es_phase"],
                      lv_edv_ml=report["lv"]["edv_ml"], lv_esv_ml=report["lv"]["esv_ml"],
                      lv_ef_percent=report["lv"]["ef_percent"], lv_mass_g=report["lv"]["mass_g"],
                      rv_edv_ml=report["rv"]["edv_ml"], rv_esv_ml=report["rv"]["esv_ml"],
                      rv_ef_percent=report["rv"]["ef_percent"])
        record["warnings"] += report["warnings"]
    elif with_function:
        record["warnings"].append("One phase only, so no cardiac function.")
    if len(rows) == 1:
        record.update({f"{name} (mL)": ml for name, ml in rows[0].items() if name != "phase"})
    return record


def run_cohort(source: str | Path, output: str | Path, model: str, device: str = "auto", with_function: bool = False,
               tta: bool | None = None, rank: CohortRank | None = None,
               log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict[str, int]:
    """Process this rank's share of the cohort; rank 0 writes the summary once every rank is done.
    Returns counts of this rank's studies: done, skipped (finished before), failed."""
    rank = rank or CohortRank.from_environment()
    studies = list_studies(source)
    ids = study_ids(studies)
    output = Path(output).expanduser()
    if output.exists() and not output.is_dir():
        raise MedSegError(f"The output {output} is a file; segment-cohort writes into a folder.",
                          code=ErrorCode.BAD_OUTPUT)
    output.mkdir(parents=True, exist_ok=True)
    dev = rank.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, rank.local_world_size)))
    segmenter = Segmenter.from_pretrained(model, dev)
    name = segmenter.manifest["name"]
    mine = rank.share(len(studies))
    log(f"rank {rank.rank}/{rank.world_size}: {len(mine)} of {len(studies)} studies, model {name} on "
        f"{describe_device(segmenter.device)}")
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for n, index in enumerate(mine):
        path, folder = studies[index], output / ids[index]
        if _finished(folder, path, name):
            counts["skipped"] += 1
            log(f"rank {rank.rank}: [{n + 1}/{len(mine)}] {ids[index]}: finished before, skipped")
            continue
        started = time.time()
        record: dict[str, Any] = {"study": ids[index], "input": str(path), "model": name, "rank": rank.rank}
        try:
            record.update(status="done", **_process(path, folder, segmenter, with_function, tta))
            counts["done"] += 1
        except MedSegError as exc:
            record.update(status="failed", error=str(exc), code=str(exc.code))
            counts["failed"] += 1
        except Exception as exc:  # noqa: BLE001 - one broken study must not stop a cohort; the traceback is logged
            traceback.print_exc(file=sys.stderr)
            record.update(status="failed", error=f"internal error: {type(exc).__name__}: {exc}",
                          code=str(ErrorCode.INTERNAL))
            counts["failed"] += 1
        record["seconds"] = round(time.time() - started, 2)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / RECORD, json.dumps(record, indent=2) + "\n")
        log(f"rank {rank.rank}: [{n + 1}/{len(mine)}] {ids[index]}: {record['status']} "
            f"({record['seconds']:.1f} s){': ' + record['error'] if 'error' in record else ''}")
    _wait_for_every_rank(rank)
    if rank.rank == 0:
        write_text_atomic(output / SUMMARY, rows_csv(summary_rows(output, studies, ids)))
        log(f"wrote {output / SUMMARY}")
    return counts


def summary_rows(output: Path, studies: list[Path], ids: list[str]) -> list[dict[str, Any]]:
    """One row per study from its record (a study without one is `missing`), warnings joined."""
    rows = []
    for path, study in zip(studies, ids):
        try:
            record = json.loads((output / study / RECORD).read_text())
        except (OSError, ValueError):
            record = {"study": study, "input": str(path), "status": "missing"}
        record["warnings"] = " | ".join(record.get("warnings", []))
        rows.append(record)
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return [{key: row.get(key, "") for key in columns} for row in rows]


def _wait_for_every_rank(rank: CohortRank) -> None:
    if rank.world_size == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank.rank, world_size=rank.world_size, timeout=BARRIER_TIMEOUT)
    dist.barrier()
    dist.destroy_process_group()
