#!/usr/bin/env bash
# One device call for GLA's chunked backward (gla-bwd, 2026-11-22 session 5; run from the carry folder .gpu-gla-bwd/,
# which holds the published attend in ./attend and this script):
#   1. attend bench linear (simple GLA and GLA rows only) at T = 16k, B = 1, H = 16, D = 128, bf16: forward, fwd+bwd,
#      backward alone and its split over the three launches (checkpoints, state-gradient sweep, chunk kernel); JSON
#   2. the same GLA rows with ATTEND_LINEAR_GLA_BWD=1 (the 4-warp chunk kernel before this work), same call; OLD=1 only:
#      session 6 removed that kernel's channel-gate code and the switch, so on later builds it would time the new kernel
#   3. attend check --backend cuda on the linear problems (every gradient against the float64 naive form)
#   4. compute-sanitizer memcheck on the same linear check (fixed seed)
# Logs go to $OUT; an NVRTC cache (nvrtc-cache.tgz from an earlier call's $OUT, copied here) saves unchanged compiles.
#   gla_bwd_run.sh all | bench (1, 2 only) | check (3, 4 only)
set -u
export PYTHONUNBUFFERED=1
export ATTEND_CUDA_CACHE=$PWD/cache
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
part=${1:-all}
[[ -f nvrtc-cache.tgz ]] && tar xzf nvrtc-cache.tgz
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
export ATTEND_BENCH_LINEAR_T=16384
if [[ $part != check ]]; then
  ATTEND_BENCH_LINEAR_METHODS=${METHODS:-simple_gla,gla} timeout ${BENCH_TIMEOUT:-200} ./attend/Attend.Cli bench linear --backend cuda \
    --json "$OUT/linear-cuda.json" > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
  grep -E "^(ceilings|simple_gla|gla)|stages|chunk_bwd|dstate|rror" "$OUT/bench.log" | grep -v recurrent | cut -c1-300
  if [[ ${OLD:-0} == 1 ]]; then
    ATTEND_LINEAR_GLA_BWD=1 ATTEND_BENCH_LINEAR_METHODS=gla timeout ${BENCH_TIMEOUT:-200} ./attend/Attend.Cli bench linear --backend cuda \
      > "$OUT/bench-old.log" 2>&1
    echo "bench (4-warp chunk kernel) rc=$?"
    grep -E "^gla .*fwd\+bwd|stages|chunk_bwd " "$OUT/bench-old.log" | cut -c1-300
  fi
fi
if [[ $part != bench ]]; then
  ATTEND_CHECK_CUDA_PARTS=linear timeout ${CHECK_TIMEOUT:-240} ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/check.log" 2>&1
  echo "check rc=$?"
  grep -E "FAIL|attend check|NVRTC|rror" "$OUT/check.log" | cut -c1-300
  grep -E "backward.*(gate|GLA|gla)" "$OUT/check.log" | cut -c1-260 | head -20
  ATTEND_CHECK_CUDA_PARTS=linear timeout ${SAN_TIMEOUT:-200} compute-sanitizer --tool memcheck --print-limit 20 ./attend/Attend.Cli check --backend cuda --cases 0 --seed 1 > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$?"
  grep -E "ERROR SUMMARY|attend check|Invalid|out of bounds" "$OUT/memcheck.log" | head -8
fi
tar czf "$OUT/nvrtc-cache.tgz" cache 2>/dev/null && ls -la "$OUT/nvrtc-cache.tgz"
