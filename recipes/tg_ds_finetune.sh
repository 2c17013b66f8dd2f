#!/usr/bin/env bash
# The bundled default plus deep supervision, one warm-restart cycle (the cycle that made the default:
# 15 epochs, lr 6e-4) on the true-geometry copy with the widened augmentation.
NAME=tg_ds_finetune_t
source "$(dirname "$0")/_common.sh" --model medsegrwkv-t --init medsegrwkv-t --epochs 15 --lr 6e-4 --crop 160 \
    --seed 8 --set deep_supervision=true
