#!/usr/bin/env bash
# One device call for the CUDA linear-attention work (run from the carry folder, .gpu-linear/): the check (linear
# cases; --cases 0 skips the exact-attention list), compute-sanitizer memcheck on the check, our bench with JSON, then
# flash-linear-attention's kernels side by side (fla's package copied into this folder). Logs go to $OUT.
#   linear_run.sh [all|check|sanitize|bench|peers|final]
#   final: check, our bench at T = 16k only, fla forwards of every method then forward+backward while time is left.
set -u
export PYTHONUNBUFFERED=1
export ATTEND_CUDA_CACHE=$PWD/cache
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
part=${1:-all}
if [[ $part == all || $part == check || $part == final ]]; then
  ./attend/Attend.Cli check --backend cuda --cases 0 2>&1 | tee "$OUT/check.log" | grep -v "^  ok" | tail -40
fi
if [[ $part == all || $part == sanitize ]]; then
  timeout 300 compute-sanitizer --tool memcheck --print-limit 20 ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/memcheck.log" 2>&1
  tail -5 "$OUT/memcheck.log"
fi
if [[ $part == final ]]; then export ATTEND_BENCH_LINEAR_T=16384; fi
if [[ $part == all || $part == bench || $part == final ]]; then
  ./attend/Attend.Cli bench linear --backend cuda --json "$OUT/linear-cuda.json" 2>&1 | tee "$OUT/bench.log"
fi
if [[ $part == all || $part == peers ]]; then
  PYTHONPATH=$PWD timeout 330 python3 linear_peers.py --ours "$OUT/linear-cuda.json" 2>&1 | tee "$OUT/peers.log" | grep -v Warning
fi
if [[ $part == final ]]; then
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-300} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
    --methods simple_gla,gla,gated_delta,delta,linear_attn,retnet --budget ${PEER_BUDGET:-150} 2>&1 | tee "$OUT/peers.log" | grep -v Warning
fi
