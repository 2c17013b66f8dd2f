#!/usr/bin/env bash
# tg_scratch.sh plus deep supervision (coarse heads at 1/2, 1/4, 1/8), to compare at one budget.
NAME=tg_ds_t
source "$(dirname "$0")/_common.sh" --model medsegrwkv-t --epochs 100 --lr 1e-3 --crop 160 --seed 5 \
    --set deep_supervision=true
