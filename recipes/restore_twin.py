"""Restore validated weights from the repository's history into a weights folder, with today's pipeline.

From session 18 to 35 the bundled default trained on all 80 patients, so changes to the pipeline
(post-processing, heart-size normalisation, ...) could not be measured with it on the validation
patients (since session 36 it trains on the training split alone). The last default before them that
trained on the training split alone is the session-17 one (commit 78f2182, validation 0.8908 with
the pipeline of its day): this writes its weights beside the bundled manifest's preprocessing and
post-processing, so that `medsegrwkv evaluate --weights DIR` scores today's pipeline on patients
those weights never saw.

    .venv/bin/python recipes/restore_twin.py                # -> runs/twin17
    .venv/bin/python recipes/restore_twin.py --commit C --output runs/twinC
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = "backend/medsegrwkv/weights/models/medsegrwkv-t"


def git_show(commit: str, path: str) -> bytes:
    return subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{path}"], check=True,
                          capture_output=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default="78f2182", help="commit whose medsegrwkv-t weights to restore")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "twin17", help="weights folder to write")
    args = parser.parse_args()
    weights = git_show(args.commit, f"{MODEL_DIR}/model.safetensors")
    then = json.loads(git_show(args.commit, f"{MODEL_DIR}/manifest.json"))
    manifest = json.loads((REPO / MODEL_DIR / "manifest.json").read_text())
    if then["architecture"] != manifest["architecture"] or then.get("config") != manifest.get("config"):
        raise SystemExit(f"The weights of {args.commit} are not today's {manifest['architecture']} network.")
    if then["training"].get("patients", "train") != "train" or not then["metrics"].get("validation"):
        raise SystemExit(f"The weights of {args.commit} have no validation of their own (trained on every patient).")
    manifest.update(sha256=hashlib.sha256(weights).hexdigest(), training=then["training"], metrics=then["metrics"],
                    comparisons=[])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "model.safetensors").write_bytes(weights)
    (args.output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.output}: medsegrwkv-t of {args.commit} (validation then "
          f"{then['metrics']['validation']['mean_dice']:.4f}) with today's pipeline settings")


if __name__ == "__main__":
    main()
