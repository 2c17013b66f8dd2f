#!/usr/bin/env bash
# The bundled default, one warm-restart cycle (the cycle that made it: 15 epochs, lr 6e-4) on the
# true-geometry copy, its labels resampled by partial volume. AUGMENTATION=wide (default) or mild
# (the augmentation that trained the default) picks the augmentation; the run folder says which.
AUGMENTATION="${AUGMENTATION:-wide}"
NAME=tg_finetune_${AUGMENTATION}_t
source "$(dirname "$0")/_common.sh" --model medsegrwkv-t --init medsegrwkv-t --epochs 15 --lr 6e-4 --crop 160 \
    --seed 8 --augmentation "$AUGMENTATION"
