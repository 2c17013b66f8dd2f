#!/usr/bin/env bash
# medsegrwkv-t from random weights on the true-geometry copy (sessions 10-13): 0.8765 at epoch 85.
NAME=tg_scratch_t
source "$(dirname "$0")/_common.sh" --model medsegrwkv-t --epochs 100 --lr 1e-3 --crop 160 --seed 5
