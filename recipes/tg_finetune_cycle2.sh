#!/usr/bin/env bash
# A second warm-restart cycle (15 epochs, lr 6e-4, mild augmentation, seed 9) from the first one's
# best weights: run `AUGMENTATION=mild bash recipes/tg_finetune.sh` first.
NAME=tg_finetune_mild_cycle2_t
source "$(dirname "$0")/_common.sh" --model medsegrwkv-t --init runs/tg_finetune_mild_t/weights --epochs 15 \
    --lr 6e-4 --crop 160 --seed 9 --augmentation mild
