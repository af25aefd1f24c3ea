#!/usr/bin/env bash
# GPU check (under 8 minutes on one GPU): the tests marked `cuda` (bf16 fine-tune steps, segmentation
# steps, extraction bf16 vs fp32, DDP with one process), then the extraction and fine-tuning benchmarks
# on the GPU; logs and JSON results go to benchmarks/results/ (gpu_check.log, gpu_check.json, ...).
#
#   benchmarks/gpu_check.sh            # on a CUDA machine, from anywhere
#   benchmarks/gpu_check.sh --dry-run  # or GPU_CHECK_DRY_RUN=1: the CPU-safe parts, results in a temp folder
#
# PYTHON selects the interpreter (default: python). Every step runs under its own timeout; a failing step
# is recorded and the next one still runs; the exit status is 1 when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
DRY=${GPU_CHECK_DRY_RUN:-0}
[[ "${1:-}" == "--dry-run" ]] && DRY=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
if [[ "$DRY" == "1" ]]; then
  RESULTS=$(mktemp -d)
else
  RESULTS=benchmarks/results
fi
export DINOTUNE_BENCH_RESULTS="$RESULTS" DINOTUNE_HOME="${DINOTUNE_HOME:-$(mktemp -d)}"
LOG="$RESULTS/gpu_check.log"
STEPS=()
FAILED=0

step() {  # step NAME SECONDS COMMAND...: run with a timeout, record rc and seconds
  local name=$1 limit=$2; shift 2
  local start=$SECONDS rc
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "== $name: rc=$rc in $((SECONDS - start)) s" | tee -a "$LOG"
  STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}")
  [[ $rc -ne 0 ]] && FAILED=1
  return 0
}

: > "$LOG"
if [[ "$DRY" == "1" ]]; then
  echo "gpu_check dry run: CPU-safe parts only, results in $RESULTS" | tee -a "$LOG"
  step collect-cuda-tests 120 "$PY" -m pytest -q -m cuda --collect-only -p no:cacheprovider tests/test_cuda.py
  step embed-tiny-cpu 180 "$PY" benchmarks/embed.py --arch vit_test16 --images 8 --image-size 32 \
    --batch-size 4 --naive-images 2 --rounds 1 --synthetic
  step compile-gpu-benchmark 60 "$PY" -m py_compile benchmarks/gpu_finetune.py
else
  step gpu-info 30 nvidia-smi
  step cuda-tests 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
  step embed-gpu 150 "$PY" benchmarks/embed.py --device cuda --images 512 --batch-size 128 --rounds 3 --compile
  step finetune-gpu 120 "$PY" benchmarks/gpu_finetune.py --steps 20 --rounds 3
fi
{
  echo "{\"dry_run\": $([[ "$DRY" == "1" ]] && echo true || echo false), \"failed\": $([[ $FAILED == 1 ]] && echo true || echo false), \"steps\": ["
  (IFS=,; echo "${STEPS[*]}")
  echo "]}"
} > "$RESULTS/gpu_check.json"
echo "gpu_check: $([[ $FAILED == 1 ]] && echo FAILED || echo ok); summary in $RESULTS/gpu_check.json" | tee -a "$LOG"
exit $FAILED
