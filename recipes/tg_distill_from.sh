#!/usr/bin/env bash
# One mild-augmentation cycle from INIT (required) distilled from TEACHER (default: INIT itself),
# TTA-averaged (the four rotations) unless TEACHER_TTA=0: `train --teacher`. WEIGHT (0.5) is the teacher's share of the
# loss; MODEL, LR (3e-4), SEED (60), EPOCHS (10), DICE and EXTRA as in tg_finetune_from.sh; into runs/$NAME
# (default tg_distill_s$SEED). Session 20: the session-19 twin distilled from its own flip-averaged predictions;
# session 33: the 2.5D twin from the 2.5D ensemble (EXTRA="--set in_channels=3").
: "${INIT:?set INIT to the starting weights folder}"
SEED="${SEED:-60}"
NAME="${NAME:-tg_distill_s${SEED}}"
TTA_FLAG=(--teacher-tta)
[ "${TEACHER_TTA:-1}" = 0 ] && TTA_FLAG=()
# shellcheck disable=SC2086
source "$(dirname "$0")/_common.sh" --model "${MODEL:-medsegrwkv-t}" --init "$INIT" --epochs "${EPOCHS:-10}" \
    --lr "${LR:-3e-4}" --crop 160 --seed "$SEED" --augmentation mild --teacher "${TEACHER:-$INIT}" \
    --distill-weight "${WEIGHT:-0.5}" "${TTA_FLAG[@]}" ${DICE:+--dice "$DICE"} ${EXTRA:-}
