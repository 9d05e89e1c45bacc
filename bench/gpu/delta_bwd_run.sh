#!/usr/bin/env bash
# One device call for the delta rules' chunked backward (run from the carry folder .gpu-delta-bwd/): attend check
# --backend cuda on the delta problems (ATTEND_CHECK_CUDA_PARTS), compute-sanitizer memcheck on the backward problems,
# the delta rows of our bench at T = 16k (forward, fwd+bwd; JSON), then flash-linear-attention's chunk_delta_rule /
# chunk_gated_delta_rule forward and forward+backward beside it (fla's package copied into this folder, its autotuning
# shortened). Logs go to $OUT.
#   delta_bwd_run.sh check   the backward problems only, memcheck, bench (no peers)
#   delta_bwd_run.sh all     the whole delta check (forward and backward), memcheck, bench, peers
#   delta_bwd_run.sh peers   only our delta bench rows and fla's gated delta forward+backward (its forward skipped), the
#                            ratio run 2 did not time; fla 0.5.2 refuses its gated chunk_bwd_dqkwg on Hopper with
#                            Triton >= 3.4 and < 3.7.1 (the device has 3.6): carry a newer Triton (or tilelang) first
set -u
export PYTHONUNBUFFERED=1
export ATTEND_CUDA_CACHE=$PWD/cache
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
part=${1:-all}
# A carried NVRTC cache (nvrtc-cache.tgz from an earlier call's $OUT) saves the compile time of unchanged kernels.
[[ -f nvrtc-cache.tgz ]] && tar xzf nvrtc-cache.tgz
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
if [[ $part != peers ]]; then
parts=delta-bwd
[[ $part == all ]] && parts=delta
ATTEND_CHECK_CUDA_PARTS=$parts timeout ${CHECK_TIMEOUT:-240} ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/check.log" 2>&1
echo "check rc=$?"
grep -E "FAIL|attend check|NVRTC|error" "$OUT/check.log" | cut -c1-300
grep -E "ok .*backward" "$OUT/check.log" | cut -c1-300
ATTEND_CHECK_CUDA_PARTS=delta-bwd timeout ${SAN_TIMEOUT:-120} compute-sanitizer --tool memcheck --print-limit 20 ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/memcheck.log" 2>&1
echo "memcheck rc=$?"
grep -E "ERROR SUMMARY|attend check|Invalid|out of bounds" "$OUT/memcheck.log" | head -8
fi
export ATTEND_BENCH_LINEAR_T=16384 ATTEND_BENCH_LINEAR_DELTA_ONLY=1
timeout ${BENCH_TIMEOUT:-120} ./attend/Attend.Cli bench linear --backend cuda --json "$OUT/linear-cuda.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^(method|delta|gated_delta|ceilings)|linear_delta|rror" "$OUT/bench.log" | cut -c1-300
if [[ $part == peers ]]; then
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-200} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
    --methods gated_delta --skip-forward --autotune-ms 5,20 2>&1 | grep -v Warning | tee "$OUT/peers.log"
fi
if [[ $part == all ]]; then
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-200} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
    --methods delta,gated_delta --autotune-ms 5,20 --budget ${PEER_BUDGET:-120} 2>&1 | grep -v Warning | tee "$OUT/peers.log"
fi
tar czf "$OUT/nvrtc-cache.tgz" cache 2>/dev/null && ls -la "$OUT/nvrtc-cache.tgz"
