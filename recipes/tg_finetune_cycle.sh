#!/usr/bin/env bash
# Warm-restart cycle CYCLE (2, 3, ...) of the mild recipe: 15 epochs, lr 6e-4, mild augmentation,
# seed 7 + CYCLE, from cycle CYCLE - 1's best weights (cycle 1: `AUGMENTATION=mild bash
# recipes/tg_finetune.sh`). Cycle 2 made the bundled default (session 16).
CYCLE="${CYCLE:-2}"
PREVIOUS=$([ "$CYCLE" -eq 2 ] && echo tg_finetune_mild_t || echo "tg_finetune_mild_cycle$((CYCLE - 1))_t")
NAME=tg_finetune_mild_cycle${CYCLE}_t INIT="runs/$PREVIOUS/weights" LR=6e-4 SEED=$((7 + CYCLE)) EPOCHS=15 \
    exec bash "$(dirname "$0")/tg_finetune_from.sh"
