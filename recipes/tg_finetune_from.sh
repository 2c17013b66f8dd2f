#!/usr/bin/env bash
# One fine-tuning cycle from any weights folder: INIT (required), AUGMENTATION (default mild), ALL_PATIENTS=1
# (train on the validation patients too, for a final model), MODEL (default medsegrwkv-t; the
# architecture of INIT), LR (default 3e-4), SEED, EPOCHS (15), DICE (sample or batch: the loss's Dice
# reduction, default sample), HARD_SLICES (a strength: draw the slices INIT gets wrong more often), EXTRA (more
# `train` options, e.g. "--set in_channels=3" or "--set deep_supervision=true"), into runs/$NAME (default
# tg_finetune_from_s$SEED_t). Session 17: third cycles from the GPU's second-cycle weights; session 19:
# a second cycle of medsegrwkv-s from its GPU run from random weights.
: "${INIT:?set INIT to the starting weights folder}"
SEED="${SEED:-24}"
NAME="${NAME:-tg_finetune_from_s${SEED}_t}"
# shellcheck disable=SC2086
source "$(dirname "$0")/_common.sh" --model "${MODEL:-medsegrwkv-t}" --init "$INIT" --epochs "${EPOCHS:-15}" \
    --lr "${LR:-3e-4}" --crop 160 --seed "$SEED" --augmentation "${AUGMENTATION:-mild}" \
    ${DICE:+--dice "$DICE"} ${HARD_SLICES:+--hard-slices "$HARD_SLICES"} ${ALL_PATIENTS:+--all-patients} ${EXTRA:-}
