#!/usr/bin/env bash
# One device call for the CUDA linear backward (run from the carry folder .gpu-linear-cuda-bwd/): the check (linear
# and decode cases, forward and backward; --cases 0 skips the exact-attention list), compute-sanitizer memcheck on the
# same check, our bench at T = 16k (forward, then forward+backward), then flash-linear-attention's forward+backward
# for linear attention and RetNet (fla's package copied into this folder). Logs go to $OUT.
#   linear_bwd_run.sh [all|nopeers]
set -u
export PYTHONUNBUFFERED=1
export ATTEND_CUDA_CACHE=$PWD/cache
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
part=${1:-all}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
./attend/Attend.Cli check --backend cuda --cases 0 2>&1 | tee "$OUT/check.log" | grep -v "^  ok" | tail -40
grep "CudaLinear backward" "$OUT/check.log"
timeout ${SANITIZE_TIMEOUT:-150} compute-sanitizer --tool memcheck --print-limit 20 ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/memcheck.log" 2>&1
echo "memcheck exit $?"; tail -4 "$OUT/memcheck.log"
ATTEND_BENCH_LINEAR_T=16384 ./attend/Attend.Cli bench linear --backend cuda --json "$OUT/linear-cuda.json" 2>&1 | tee "$OUT/bench.log"
if [[ $part == all ]]; then
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-240} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --skip-forward \
    --methods linear_attn,retnet 2>&1 | tee "$OUT/peers.log" | grep -v Warning
fi
