#!/usr/bin/env bash
# The bundled default, one warm-restart cycle (the cycle that made it: 15 epochs, lr 6e-4) on the
# true-geometry copy, its labels resampled by partial volume. AUGMENTATION=wide (default) or mild
# (the augmentation that trained the default) picks the augmentation; ALL_PATIENTS=1 trains the
# final model of the recipe on every patient, the validation patients too (no validation).
AUGMENTATION="${AUGMENTATION:-wide}"
NAME=tg_finetune_${AUGMENTATION}${ALL_PATIENTS:+_all}_t
# shellcheck disable=SC2086
source "$(dirname "$0")/_common.sh" --model medsegrwkv-t --init medsegrwkv-t --epochs 15 --lr 6e-4 --crop 160 \
    --seed 8 --augmentation "$AUGMENTATION" ${ALL_PATIENTS:+--all-patients}
