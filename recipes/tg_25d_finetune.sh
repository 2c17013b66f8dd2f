#!/usr/bin/env bash
# 2.5D: the bundled default grown to three input slices (each slice between its neighbours; the
# neighbours' kernels start at zero), one warm-restart cycle (15 epochs, lr 6e-4) on the
# true-geometry copy with the widened augmentation. EXTRA passes more options (e.g. deep supervision).
NAME=tg_25d_finetune_t
# shellcheck disable=SC2086
source "$(dirname "$0")/_common.sh" --model medsegrwkv-t --init medsegrwkv-t --epochs 15 --lr 6e-4 --crop 160 \
    --seed 8 --set in_channels=3 ${EXTRA:-}
