#!/usr/bin/env bash
# delta-speed: one device call for the delta rules' backward speed (run from the carry folder .gpu-delta-speed/).
#  1. In parallel (NVRTC compiles on the CPU; separate disk caches): attend check --backend cuda on the delta problems
#     (forward and backward, the chunk kernel at its default 8 warps), the backward problems again at 4 warps
#     (ATTEND_CHECK_DELTA_BWD_WARPS=4), and compute-sanitizer memcheck on the backward problems.
#  2. Our delta bench at T = 16k alone on the GPU: forward, fwd+bwd (default, /keepT, /keep, /cw4), stage split.
#  3. flash-linear-attention 0.5.2 (copied into this folder) chunk_delta_rule / chunk_gated_delta_rule forward+backward
#     in the same call, verified against a float32 reference first (its Hopper guard bypassed).
# Logs go to $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
part=${1:-all}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== start $(date -u '+%H:%M:%S')"
if [[ $part == all || $part == check ]]; then
  ATTEND_CUDA_CACHE=$PWD/cache ATTEND_CHECK_CUDA_PARTS=delta timeout ${CHECK_TIMEOUT:-170} \
    ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/check.log" 2>&1 &
  p1=$!
  ATTEND_CUDA_CACHE=$PWD/cache4 ATTEND_CHECK_DELTA_BWD_WARPS=4 ATTEND_CHECK_CUDA_PARTS=delta-bwd timeout ${CHECK_TIMEOUT:-170} \
    ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/check-cw4.log" 2>&1 &
  p2=$!
  ATTEND_CUDA_CACHE=$PWD/cachem ATTEND_CHECK_CUDA_PARTS=delta-bwd timeout ${CHECK_TIMEOUT:-170} \
    compute-sanitizer --tool memcheck --print-limit 20 ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/memcheck.log" 2>&1 &
  p3=$!
  wait $p1; echo "check (cw8) rc=$?"
  wait $p2; echo "check (cw4, backward) rc=$?"
  wait $p3; echo "memcheck rc=$?"
  grep -a -E "FAIL|attend check:|NVRTC|rror" "$OUT/check.log" | cut -c1-330
  grep -a -E "FAIL|attend check:|rror" "$OUT/check-cw4.log" | cut -c1-330
  grep -a -E "ERROR SUMMARY|attend check:|Invalid|out of bounds" "$OUT/memcheck.log" | head -8
  grep -a -E "ok .*backward" "$OUT/check.log" | cut -c1-330
  mkdir -p cache && cp -rn cache4/. cache/ 2>/dev/null
  echo "== checks done $(date -u '+%H:%M:%S')"
fi
export ATTEND_CUDA_CACHE=$PWD/cache
ATTEND_BENCH_LINEAR_T=16384 ATTEND_BENCH_LINEAR_DELTA_ONLY=1 ATTEND_BENCH_DELTA_METHODS=delta,gated_delta ATTEND_BENCH_DELTA_NO_BLOCKS=1 \
  timeout ${BENCH_TIMEOUT:-130} ./attend/Attend.Cli bench linear --backend cuda --json "$OUT/linear-cuda.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -a -E "^(delta|gated_delta)|linear_delta|rror" "$OUT/bench.log" | cut -c1-330
echo "== bench done $(date -u '+%H:%M:%S')"
if [[ $part == all || $part == peers ]]; then
  export TRITON_CACHE_DIR=/tmp/triton-cache
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-290} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
    --methods gated_delta,delta --skip-forward --verify --bypass-hopper-guard --autotune-ms 5,20 2>&1 | grep -v Warning | tee "$OUT/peers.log"
fi
echo "== done $(date -u '+%H:%M:%S')"
