#!/usr/bin/env bash
# One device call for the whole CUDA backend after merging (run from the carry folder, e.g. .gpu/, which holds the
# published attend in ./attend, this script, linear_peers.py and flash-linear-attention's `fla` package copied from its
# source mirror — never committed):
#   1. attend check --backend cuda           exact (forward, backward, decode), linear (forward, backward), sparse cases
#   2. compute-sanitizer memcheck            on a small check (3 exact problems + every linear and sparse case)
#   3. attend bench linear --backend cuda    forward and forward+backward at T = 16k, B = 1, H = 16, D = 128, bf16
#   4. linear_peers.py                       fla's forward+backward for linear attention, RetNet and GLA (PEER_METHODS)
#                                            on the same shape, in the same call, beside ours (fla's autotuner times
#                                            each config for 20 ms instead of 100; fla 0.5.2 refuses simple GLA's
#                                            backward on Triton < 3.7.1 on Hopper, so it is left out)
# Logs and JSON go to $OUT.   Usage: bash all-check.sh
set -u
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1 ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 240 ./attend/Attend.Cli check --backend cuda 2>&1 | tee "$OUT/check.log" | grep -v "^  ok " | tail -30
echo "check exit ${PIPESTATUS[0]}"
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 ./attend/Attend.Cli check --backend cuda --cases 3 --seed 1 > "$OUT/sanitizer.log" 2>&1
echo "sanitizer exit $?"; grep -E "ERROR SUMMARY|attend check:" "$OUT/sanitizer.log" | head -5
ATTEND_BENCH_LINEAR_T=16384 timeout 120 ./attend/Attend.Cli bench linear --backend cuda --json "$OUT/linear-cuda.json" 2>&1 | tee "$OUT/bench-linear.log"
PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-200} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --skip-forward \
  --methods ${PEER_METHODS:-linear_attn,retnet,gla} --autotune-ms 5,20 2>&1 | tee "$OUT/peers.log" | grep -v Warning
