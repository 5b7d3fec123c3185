#!/usr/bin/env bash
# The GPU part of the benchmarks, in one script: speed at GPU scale, then a short run of the
# paper's CIFAR protocol with QSGLD and SGD. Run from the repository root on a GPU machine:
#
#   benchmarks/gpu.sh [--data-dir DIR] [--output-dir DIR] [--epochs N] [--quick]
#
# Real CIFAR needs internet or a prepared tensorflow-datasets --data-dir; with neither the
# CIFAR run says so in one line and is skipped, and the speed tables still run.
# --quick: tiny sizes, minutes on any machine (proves the script). Each table is resumable:
# rerun the same command after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=""
DATA_DIR=""
EPOCHS=5
QUICK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --output-dir) OUT="$2"; shift 2 ;;
    --epochs) EPOCHS="$2"; shift 2 ;;
    --quick) QUICK="--quick"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
# Published tables go to benchmarks/results/gpu (quoted by BENCHMARKS.md); quick runs elsewhere.
if [ -z "$OUT" ]; then
  if [ -n "$QUICK" ]; then OUT=results/benchmarks/gpu; else OUT=benchmarks/results/gpu; fi
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export KERAS_BACKEND=tensorflow
"$PY" -c "import tensorflow as tf; print('GPUs:', tf.config.list_physical_devices('GPU'))"

# 1. Speed, every installed backend (each in a process of its own), every mode: apply over
#    ResNet50 (25.6M) and the CIFAR ResNet-50; whole steps of the 19M-parameter MLP; breakdown.
"$PY" -m benchmarks.speed $QUICK --output-dir "$OUT/speed" --optimizers all --rounds 20 --warmup 3

# 2. Short CIFAR protocol, QSGLD and SGD (real data if available).
CIFAR_ARGS=(--output-dir "$OUT/cifar" --epochs "$EPOCHS" --seeds 1)
if [ -n "$DATA_DIR" ]; then CIFAR_ARGS+=(--data-dir "$DATA_DIR"); fi
"$PY" -m benchmarks.cifar $QUICK "${CIFAR_ARGS[@]}" || echo "CIFAR run skipped (the line above says why)"
if [ -z "$QUICK" ]; then "$PY" -m benchmarks.report; fi
echo "tables in $OUT"
