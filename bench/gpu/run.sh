#!/usr/bin/env bash
# bench/gpu/run.sh: the whole GPU record in one call on the device machine (which has no .NET SDK and no network).
#   1. attend check --backend cuda            every CUDA variant vs the float64 reference (random problems, poisoned outputs)
#   2. compute-sanitizer memcheck             on a small check (3 problems)
#   3. attend bench --backend cuda            protocol GPU shapes, CUDA events, sampled reference check
#   4. peers.py                               PyTorch SDPA (flash / cuDNN / efficient forced) and compiled flex_attention on
#                                             the same shapes; error of ours vs SDPA on the same inputs (through attend run);
#                                             one table: ours, theirs, ratio
# Expects the published self-contained `attend` beside it in ./attend (see docs/CUDA-KERNELS.md for the publish command).
# Usage: bash run.sh [--quick | --bwd | --probe]     Results and logs go to $OUT (or /tmp/attend-gpu).
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ATTEND="$HERE/attend/Attend.Cli"
OUT=${OUT:-/tmp/attend-gpu}
mkdir -p "$OUT"
export ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache   # first compile of each specialisation is reported separately
export PYTHONUNBUFFERED=1
rm -rf "$ATTEND_CUDA_CACHE"                       # cold cache: the check pays (and reports) NVRTC, the bench reads the cache
QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"
# --bwd: the same four steps, but the bench and the peers only on the backward rows (saves device time).
[ "${1:-}" = "--bwd" ] && export ATTEND_BENCH_PART=backward
if [ "${1:-}" = "--probe" ]; then   # kernel development: tile shapes through CuPy/NVRTC beside SDPA flash
  exec python3 "$HERE/kernel_probe.py" "$HERE/flash_forward.cu"
fi
status=0

echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
echo "== 1. attend check --backend cuda"
timeout 240 "$ATTEND" check --backend cuda 2>&1 | tee "$OUT/check.log" | grep -v '^  ok ' ; rc=${PIPESTATUS[0]}
echo "check exit code: $rc"; [ "$rc" = 0 ] || status=1

echo "== 2. compute-sanitizer memcheck (small check)"
timeout 240 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 "$ATTEND" check --backend cuda --cases 3 --seed 1 > "$OUT/sanitizer.log" 2>&1; rc=$?
grep -E "ERROR SUMMARY|LEAK SUMMARY|Invalid|attend check:" "$OUT/sanitizer.log" | head -20
echo "sanitizer exit code: $rc"; [ "$rc" = 0 ] || status=1

echo "== 3. attend bench --backend cuda"
timeout 300 "$ATTEND" bench --backend cuda $QUICK --json "$OUT/ours.json" 2>&1 | tee "$OUT/bench.log"; rc=${PIPESTATUS[0]}
echo "bench exit code: $rc"; [ "$rc" = 0 ] || status=1

echo "== 4. PyTorch peers, same shapes"
timeout 420 python3 "$HERE/peers.py" --ours "$OUT/ours.json" --attend "$ATTEND" --out "$OUT" $QUICK 2>&1 | grep -v Warning | tee "$OUT/peers.log"; rc=${PIPESTATUS[0]}
echo "peers exit code: $rc"; [ "$rc" = 0 ] || status=1
echo "== done, exit $status"
exit $status
