#!/usr/bin/env bash
# Reproduce the CIFAR-10 study's ablations with fireablate, on whatever data you give it.
#
#   examples/reproduce_study.sh [DATA] [LEDGER] [more train options...]
#
#   examples/reproduce_study.sh                                 # official CIFAR-10, runs/ledger.csv
#   examples/reproduce_study.sh ./cifar10-jpeg runs/jpeg.csv --recipe fast --epochs 30
#   SEEDS=3 examples/reproduce_study.sh cifar10 runs/ledger.csv --gpus 0,1
#
# It runs the study's three experiments as resumable sweeps (run it again after an interruption
# and it picks up where it stopped), then draws the figures and prints Table I:
#   1. the squeeze-ratio sweep (Fig. 4a), 2. the 3x3-share sweep (Fig. 4b),
#   3. the Table I variants, AlexNet baseline included.
# Environment: SEEDS (runs per value, default 1), SR_VALUES, PCT_VALUES, VARIANTS, FIGURES.
set -uo pipefail

DATA=${1:-cifar10}
LEDGER=${2:-runs/ledger.csv}
shift $(( $# < 2 ? $# : 2 ))
SEEDS=${SEEDS:-1}
SR_VALUES=${SR_VALUES:-0.125,0.25,0.5,0.75,1.0}
PCT_VALUES=${PCT_VALUES:-0.01,0.125,0.25,0.375,0.5,0.625,0.75,0.875,0.99}
VARIANTS=${VARIANTS:-alexnet_cifar,cifar,cifar_simple_bypass,cifar_complex_bypass,cifar_valid_padding,cifar_early_pool,cifar_optimized}
FIGURES=${FIGURES:-figures}

status=0
common=(--data "$DATA" --ledger "$LEDGER" --seeds "$SEEDS" "$@")
fireablate sweep --preset cifar --param sr --values "$SR_VALUES" "${common[@]}" || status=1
fireablate sweep --preset cifar --param pct3x3 --values "$PCT_VALUES" "${common[@]}" || status=1
fireablate sweep --param preset --values "$VARIANTS" "${common[@]}" || status=1

fireablate plot --ledger "$LEDGER" --out-dir "$FIGURES" || status=1
fireablate plot --kind pareto --ledger "$LEDGER" --out-dir "$FIGURES" || status=1
fireablate report --ledger "$LEDGER" --baseline alexnet_cifar --markdown || status=1
exit $status
