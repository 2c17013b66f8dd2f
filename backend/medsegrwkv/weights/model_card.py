"""A model card rendered from a segmentation manifest, so the card and the weights never disagree."""

from __future__ import annotations

from typing import Any

from medsegrwkv import STRUCTURES
from medsegrwkv.nets.complexity import reference_input_label
from medsegrwkv.nets.registry import slice_context


def _init_lines(init: dict[str, Any] | None) -> list[str]:
    """Fine-tuned weights say what they started from, and how that was trained."""
    if not init:
        return []
    dice = init.get("mean_dice")
    lines = [f"- Fine-tuned from `{init['weights']}` (SHA-256 `{init['sha256'][:12]}...`, "
             f"{init.get('epochs_completed')} epochs on {init.get('device')}"
             + (f", validation mean Dice {dice:.4f}" if dice is not None else "") + "); the epochs above are this run's."]
    if init.get("note"):
        lines.append(f"- The starting weights: {init['note']}")
    return lines


def _soup_lines(sources: list[dict[str, Any]] | None) -> list[str]:
    """Averaged weights (`medsegrwkv average-weights`) name every run in the average."""
    if not sources:
        return []
    runs = "; ".join(f"`{s['weights']}` (seed {s.get('seed')}, {s.get('augmentation')} augmentation, "
                     f"{'batch' if s.get('dice') == 'batch' else 'per-slice'} Dice, {s.get('epochs_completed')} epochs"
                     + (f", validation {s['mean_dice']:.4f}" if s.get("mean_dice") is not None else "") + ")"
                     for s in sources)
    return [f"- **The average of {len(sources)} runs' weights** (a model soup; the settings above are the first "
            f"run's, the time all of theirs): {runs}."]


def _validation_source(v: dict[str, Any], t: dict[str, Any]) -> str:
    """Which weights the validation table describes, and how they were chosen."""
    if v.get("source"):
        return v["source"]
    if not v:
        return "Not validated yet: `medsegrwkv evaluate --split val --weights DIR --record` stores a validation here."
    if t.get("averaged_from"):
        return f"The averaged weights, validated after averaging ({v.get('volumes')} volumes)."
    chosen = ("The final epoch's weights, validated after training" if v.get("selection") == "final epoch" else
              "Best of the validations made every few epochs")
    return chosen + f" (epoch {v.get('epoch')}, {v.get('volumes')} volumes)."


def _teacher_lines(teacher: dict[str, Any] | None) -> list[str]:
    """Distilled weights say whose soft predictions they learned from, and with what share of the loss."""
    if not teacher:
        return []
    dice = teacher.get("mean_dice")
    return [f"- Distilled from `{teacher['weights']}` ({teacher.get('architecture')}"
            + (", test-time augmented" if teacher.get("tta") else "")
            + (f", validation mean Dice {dice:.4f}" if dice is not None else "")
            + f"): KL divergence from its probabilities, {teacher.get('distill_weight')} of the loss."]


def render_table(rows: list[dict[str, Any]]) -> str:
    """`medsegrwkv compare` rows as a Markdown table; here because cards embed the same table."""
    if rows and rows[0].get("task") == "grading":
        return render_grading_table(rows)
    names = list(STRUCTURES.values())
    header = ["model", "config", "Dice mean", *(f"Dice {n}" for n in names), "HD95 mean (mm)",
              *(f"HD95 {n}" for n in names), "params", "GFLOPs (256² slice; 3D: crop)", "CPU ms/slice",
              "best epoch", "training time"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in rows:
        v = r["validation"]
        hours = f"{r['wall_time_s'] / 3600:.2f} h" if r.get("wall_time_s") else "-"
        lines.append(f"| `{r['name']}` | {r['config'] or 'default'} | **{v['mean_dice']:.4f}** | "
                     + " | ".join(f"{v[f'{n}_dice']:.4f}" for n in names) + f" | {v['mean_hd95']:.2f} | "
                     + " | ".join(f"{v[f'{n}_hd95']:.2f}" for n in names)
                     + f" | {r['params'] / 1e6:.2f} M | {r['gflops']:.2f} | {r['cpu_ms_per_slice']:.0f} | "
                     f"{r['best_epoch']}/{r['epochs']} | {hours} |")
    return "\n".join(lines) + "\n"


def render_grading_table(rows: list[dict[str, Any]]) -> str:
    """Motion graders side by side: the simulated-motion validation of `train grade` (5 scores and
    CMRxMotion's 3 levels), calibration, clean slices graded mild in the worst slice position, cost."""
    header = ["grader", "config", "acc 5", "lin. kappa 5", "acc 3", "kappa 3", "ECE after T",
              "clean graded mild, worst position", "params", "GFLOPs / slice", "CPU ms/slice", "best epoch",
              "training time"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in rows:
        v = r["validation"]
        worst = v.get("clean", {}).get("min_position_mild_rate")
        clean = "-" if worst is None else f"{worst:.2f}"
        minutes = f"{r['wall_time_s'] / 60:.0f} min" if r.get("wall_time_s") else "-"
        lines.append(f"| `{r['name']}` | {r['config'] or 'default'} | {v['accuracy']:.3f} | **{v['kappa_linear']:.3f}** | "
                     f"{v['accuracy_3level']:.3f} | {v['kappa_3level']:.3f} | "
                     f"{v.get('ece_temperature_scaled', v['ece']):.3f} | {clean} | {r['params'] / 1e6:.1f} M | "
                     f"{r['gflops']:.2f} | {r['cpu_ms_per_slice']:.0f} | {r['best_epoch']}/{r['epochs']} | {minutes} |")
    return "\n".join(lines) + "\n"


def comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    """Tables of `medsegrwkv compare` rows (this model beside others on the same validation split),
    stored in the manifest as [{"title": ..., "rows": [...]}], so the card shows the evidence for it."""
    if not comparisons:
        return []
    lines = ["## Compared with other models on the same validation split", ""]
    for comparison in comparisons:
        lines += [comparison["title"], "", render_table(comparison["rows"])]
    return lines


def all_patients(manifest: dict[str, Any]) -> bool:
    """Weights trained on every patient, the validation patients too (`train --all-patients`)."""
    return manifest.get("training", {}).get("patients") == "all"


def render_segmentation_card(manifest: dict[str, Any], params: int, gflops: float) -> str:
    t = manifest.get("training", {})
    v = manifest.get("metrics", {}).get("validation", {})
    prep = manifest.get("preprocessing", {})
    context = slice_context(manifest["architecture"], manifest.get("config", {}))  # 2.5D: neighbours a side
    lines = [
        f"# Model card: `{manifest['name']}`",
        "",
        f"- **Architecture:** `{manifest['architecture']}` ({params / 1e6:.2f} M parameters, {gflops:.2f} GFLOPs "
        f"per {reference_input_label(manifest['architecture'])} by torch.utils.flop_counter), config `"
        + str(manifest.get("config")) + "`.",
        "- **Task:** segmentation of short-axis cardiac cine MRI into "
        + ", ".join(f"{l['value']} {l['name']}" for l in manifest["labels"]) + " (0 background).",
        "- **Intended use:** research. Outputs must be reviewed by a qualified reader; not a medical device.",
        f"- **Input:** one 3D short-axis stack (one cardiac phase), any orientation (reoriented to a canonical "
        f"layout), normalised by percentile clipping {prep.get('percentiles')} and resampled in-plane to "
        f"{prep.get('spacing_xy_mm')} mm; predictions are mapped back to the input grid."
        + (f" Each slice goes in with {context} neighbouring slice{'s' if context > 1 else ''} on either side as further "
           "channels (2.5D; the end slices repeated past the stack's ends)."
           if context else "")
        + (f" A heart beyond the training hearts' {prep['heart_size_mm'][0]}-{prep['heart_size_mm'][1]} mm "
           "(LV epicardial diameter, largest slice) is segmented again at the pixel size that shows it at the nearest "
           "trained size." if prep.get("heart_size_mm") else "")
        + (f" A stack noisier than the training studies (noise {prep['noise_sigma'][0]}-{prep['noise_sigma'][1]} of the "
           "intensity range on the network grid) is smoothed by edge-preserving diffusion first."
           if prep.get("noise_sigma") else ""),
        "- **Post-processing:** the largest 3D piece of each structure (of the RV, the largest beside the "
        "myocardium), holes in the cavities filled"
        + ("; the RV taken off the basal slices where a 2D network paints the right atrium (`trim_basal_rv`)"
           if manifest.get("postprocessing", {}).get("trim_basal_rv") else "") + ".",
        "",
        "## Training data and licence",
        f"- {manifest.get('licence', '')}",
        *(_ensemble_lines(t["ensemble_of"]) if t.get("ensemble_of") else _training_lines(manifest)),
        "",
        "## Validation (deployed pipeline, post-processing on, no TTA)" if not v.get("source") else
        "## Validation of the recipe (deployed pipeline, post-processing on, no TTA)",
        "",
        "| structure | Dice | HD95 (mm) |",
        "|---|---|---|",
    ]
    for name in (*STRUCTURES.values(), "mean"):
        if f"{name}_dice" in v:
            lines.append(f"| {name} | {v[f'{name}_dice']:.4f} | {v[f'{name}_hd95']:.2f} |")
    lines += [
        "",
        _validation_source(v, t),
        "",
        *comparison_lines(manifest.get("comparisons", [])),
        "## Limitations",
        "- ACDC comes from one centre (Dijon, 1.5 T and 3 T Siemens); other vendors and sequences may do worse.",
        "- HD95 and volumes are in mm from each image's own pixel spacing and slice positions."
        + (" These weights were trained on an ACDC copy that gave every image a nominal 1.5625 mm pixel, so they "
           "saw hearts up to 25% off their true size." if t.get("pixel_spacing") == "nominal" else ""),
        "- Apical and basal slices are the hardest; check them, and the RV in particular.",
        "",
        f"Weights: `model.safetensors` ({manifest.get('dtype')}), SHA-256 `{manifest.get('sha256')}` (checked at load).",
        "",
    ]
    return "\n".join(lines)


def _ensemble_lines(members: list[dict[str, Any]]) -> list[str]:
    """An ensemble (`medsegrwkv ensemble-weights`) names each member, its vote and how it was trained."""
    lines = [f"- **A probability ensemble of {len(members)} networks**, each trained on its own; their softmax "
             "probabilities are averaged with these votes:"]
    for m in members:
        dice = m.get("mean_dice")
        whose = "its recipe's validation" if m.get("recipe_validation") else "validation"
        lines.append(f"  - `{m['weights']}` ({m['architecture']}, vote {m['weight']:.2f}, SHA-256 {m['sha256'][:12]}...; "
                     + ("every patient" if m.get("patients") == "all" else f"split {m.get('split')}")
                     + f", {m.get('epochs_completed')} epochs"
                     + (f", {whose} mean Dice {dice:.4f}" if dice is not None else "") + ").")
    return lines


def _training_lines(manifest: dict[str, Any]) -> list[str]:
    """How one network was trained: data, schedule, loss, start, teacher, soup."""
    t = manifest.get("training", {})
    return [
        (f"- Split: {t.get('split')}; {t.get('train_volumes')} training volumes, {t.get('validation_volumes')} "
         "validation volumes (ED and ES frames; patient-level, 4 validation patients per pathology group)."
         if not all_patients(manifest) else
         f"- Split: none; {t.get('train_volumes')} training volumes (ED and ES frames): every patient, the validation "
         "patients included, once a run on the split had fixed the recipe."),
        f"- {t.get('epochs_completed')} epochs ({t.get('optimizer_steps')} optimiser steps, batch {t.get('batch_size')}, "
        f"crop {t.get('crop')}, "
        + (f"{t['augmentation']} augmentation, " if t.get("augmentation") else "")
        + f"AdamW lr {t.get('lr')}, weight decay {t.get('weight_decay')}, cosine schedule, "
        + ("Dice over the whole batch" if t.get("dice") == "batch" else "Dice")
        + f" + cross-entropy) on {t.get('device')} with {t.get('processes')} process(es) in {t.get('wall_time_s')} s, "
        f"torch {t.get('torch')}.",
        *([f"- Hard slices: each training slice drawn in proportion to 1 + {t['hard_slices']} x its Dice deficit under "
           "the starting weights / the mean deficit."] if t.get("hard_slices") else []),
        *([f"- Weight averaging: the learning rate held from epoch {t['weight_average']['from_epoch']} on, and these "
           f"weights the average of the network's at the end of each of its last {t['weight_average']['epochs_averaged']} "
           "epochs (stochastic weight averaging)."] if t.get("weight_average") else []),
        *_init_lines(t.get("init")),
        *_teacher_lines(t.get("teacher")),
        *_soup_lines(t.get("averaged_from")),
        *([f"- {t['note']}"] if t.get("note") else []),
    ]


def render_refinement_card(manifest: dict[str, Any], params: int, gflops: float) -> str:
    t = manifest.get("training", {})
    v = manifest.get("metrics", {}).get("validation_clicks", {})
    lines = [
        f"# Model card: `{manifest['name']}` (click refinement)",
        "",
        f"- **Architecture:** `{manifest['architecture']}` ({params / 1e6:.2f} M parameters, {gflops:.2f} GFLOPs "
        f"per {reference_input_label(manifest['architecture'])}), config `" + str(manifest.get("config")) + "`.",
        "- **Task:** correct one structure (" + ", ".join(l["name"] for l in manifest["labels"]) + ") on one "
        "short-axis slice from the current mask and the user's positive/negative clicks.",
        "- **Intended use:** research; the reader accepts or edits every correction.",
        "",
        "## Training",
        f"- {manifest.get('licence', '')}",
        f"- Split: {t.get('split')}; {t.get('train_volumes')} training volumes. Started from `{t.get('init')}`'s "
        f"weights; {t.get('epochs_completed')} epochs ({t.get('optimizer_steps')} steps, batch {t.get('batch_size')}, "
        f"crop {t.get('crop')}, lr {t.get('lr')}) in {t.get('wall_time_s')} s. Simulated clicks: start from the "
        f"automatic prediction ({t.get('p_automatic')}) or an empty mask, then 0-{t.get('click_rounds')} rounds of "
        "refine + click at the largest error.",
        "",
    ]
    lines += click_tables(v)
    lines += [f"Weights: `model.safetensors` ({manifest.get('dtype')}), SHA-256 `{manifest.get('sha256')}`.", ""]
    return "\n".join(lines)


def click_tables(summary: dict[str, Any]) -> list[str]:
    """Markdown tables of a click evaluation (medsegrwkv.training.click_evaluation), one per start."""
    lines: list[str] = []
    for start in ("automatic", "empty"):
        if start not in summary:
            continue
        lines += [f"### From the {start} mask ({summary.get('volumes')} volumes"
                  + (f", epoch {summary['epoch']}" if "epoch" in summary else "") + ")", "",
                  "| structure | slices | Dice, 0 clicks | 1 click | 3 clicks | 5 clicks | "
                  f"NoC@{summary.get('target_dice', 0.9):.2f} (max {summary.get('max_clicks')}) | slices reaching it |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, row in summary[start].items():
            cells = " | ".join(f"{row[f'dice_{n}']:.3f}" if f"dice_{n}" in row else "-" for n in (0, 1, 3, 5))
            lines.append(f"| {name} | {row['slices']} | {cells} | {row['noc']:.2f} | {100 * row['reached']:.0f}% |")
        lines.append("")
    return lines
