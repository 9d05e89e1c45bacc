#!/usr/bin/env bash
# One device call for the CUDA delta rules (run from the carry folder .gpu-linear-delta/): attend check --backend cuda
# (--cases 0: the linear, delta, decode and sparse CUDA problems), compute-sanitizer memcheck, our bench at T = 16k
# (JSON), then flash-linear-attention's chunk_delta_rule / chunk_gated_delta_rule forwards beside it (fla's package
# copied into this folder). Logs go to $OUT.
#   delta_run.sh all    check, memcheck on the check, bench, peers (run 1)
#   delta_run.sh final  check, bench, peers, then memcheck on `bench linear --backend cuda --quick` (T = 1024) (run 2)
set -u
export PYTHONUNBUFFERED=1
export ATTEND_CUDA_CACHE=$PWD/cache
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
part=${1:-all}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
timeout ${CHECK_TIMEOUT:-170} ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/check.log" 2>&1
echo "check rc=$?"; grep -E "FAIL|attend check" "$OUT/check.log" | cut -c1-230; grep -c "^  ok   CudaDelta\|^  ok   CudaGatedDelta" "$OUT/check.log"
if [[ $part == all ]]; then
  timeout 150 compute-sanitizer --tool memcheck --print-limit 20 ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|attend check" "$OUT/memcheck.log" | tail -3
fi
export ATTEND_BENCH_LINEAR_T=16384
timeout 100 ./attend/Attend.Cli bench linear --backend cuda --json "$OUT/linear-cuda.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"; grep -E "^(method|linear_attn|delta|gated_delta|ceilings)" "$OUT/bench.log"; grep "linear_delta" "$OUT/bench.log"
PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-130} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
  --methods gated_delta,delta --budget 0 2>&1 | grep -v Warning | tee "$OUT/peers.log"
if [[ $part == final ]]; then
  unset ATTEND_BENCH_LINEAR_T
  timeout ${SAN_TIMEOUT:-80} compute-sanitizer --tool memcheck --print-limit 20 ./attend/Attend.Cli bench linear --backend cuda --quick > "$OUT/memcheck-bench.log" 2>&1
  echo "memcheck (bench --quick) rc=$?"; grep -E "ERROR SUMMARY|^delta|^gated_delta" "$OUT/memcheck-bench.log" | tail -6
fi
