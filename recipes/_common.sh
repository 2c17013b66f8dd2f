# Sourced by the recipes: run `medsegrwkv train` on the true-geometry ACDC copy into runs/$NAME.
# THREADS (default: all cores) caps the CPU threads; DEVICE (default auto) picks cpu or cuda.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS="${THREADS:-$(nproc)}"
mkdir -p "runs/$NAME"
exec .venv/bin/medsegrwkv train segment --data "${DATA:-../shared/data/acdc}" --output "runs/$NAME" \
    --device "${DEVICE:-auto}" "$@" >> "runs/$NAME/train.log" 2>&1
