#!/usr/bin/env bash
# bench/gpu/bwd-wg.sh: one device call for the backward's kernel work (session 3, cuda-bwd): the check with the default
# backward (wgmma on Hopper), memcheck on a small check, the backward bench rows for each variant side by side
# (wgmma; mma.sync; wgmma sized for 3 CTAs per SM at D = 64; Δ + dQ alone), then PyTorch SDPA's flash and cuDNN
# backward on the same shapes (peers.py, against the default variant's JSON). Expects the published `attend` in ./attend
# and peers.py beside this script. Usage: bash bwd-wg.sh [--no-check]. Logs go to $OUT (at most 8 files come back).
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ATTEND="$HERE/attend/Attend.Cli"
OUT=${OUT:-/tmp/attend-gpu}
mkdir -p "$OUT"
export ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache PYTHONUNBUFFERED=1 ATTEND_BENCH_PART=backward
rm -rf "$ATTEND_CUDA_CACHE"
status=0
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
if [ "${1:-}" != "--no-check" ]; then
  echo "== 1. attend check --backend cuda (NVRTC warnings of successful builds printed: ATTEND_CUDA_NVRTC_LOG=1)"
  ATTEND_CUDA_NVRTC_LOG=1 timeout 300 "$ATTEND" check --backend cuda > "$OUT/check.log" 2>&1; rc=$?
  grep -a -E "FAIL|attend check:" "$OUT/check.log" | head -40
  grep -a -c "^  ok .*backward" "$OUT/check.log" | sed 's/^/backward problems ok: /'
  grep -a -E "C75" "$OUT/check.log" | sort | uniq -c | head -20
  echo "check exit code: $rc"; [ "$rc" = 0 ] || status=1
  echo "== 2. compute-sanitizer memcheck (small check)"
  timeout 240 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 "$ATTEND" check --backend cuda --cases 3 --seed 1 > "$OUT/sanitizer.log" 2>&1; rc=$?
  grep -E "ERROR SUMMARY|LEAK SUMMARY|Invalid|attend check:" "$OUT/sanitizer.log" | head -20
  echo "sanitizer exit code: $rc"; [ "$rc" = 0 ] || status=1
fi
echo "== 3. backward bench rows, variants side by side"
for v in ${VARIANTS:-wgmma mma wg3 dqonly}; do
  case $v in
    wgmma) envs="" ;;
    mma) envs="ATTEND_CUDA_BWD_WGMMA=0" ;;
    wg3) envs="ATTEND_CUDA_BWD_WG_CTAS=3" ;;
    dqonly) envs="ATTEND_CUDA_BWD_SKIP=dkdv" ;;
  esac
  echo "-- $v ($envs)" | tee -a "$OUT/bench.log"
  env $envs timeout 200 "$ATTEND" bench --backend cuda --json "$OUT/ours-$v.json" > "/tmp/bench-$v.log" 2>&1; rc=$?
  grep -E "bwd|FAIL" "/tmp/bench-$v.log"; cat "/tmp/bench-$v.log" >> "$OUT/bench.log"
  echo "bench $v exit code: $rc"; [ "$rc" = 0 ] || status=1
done
rm -f "$OUT/ours-wg3.json" "$OUT/ours-dqonly.json"
if [ -n "${CHECK_ALSO:-}" ]; then
  echo "== 3b. attend check --backend cuda with $CHECK_ALSO"
  env $CHECK_ALSO timeout 300 "$ATTEND" check --backend cuda > /tmp/check2.log 2>&1; rc=$?
  grep -a -E "FAIL|attend check:" /tmp/check2.log | head -20; echo "check ($CHECK_ALSO) exit code: $rc"; [ "$rc" = 0 ] || status=1
  { echo "== check with $CHECK_ALSO"; cat /tmp/check2.log; } >> "$OUT/check.log"
fi
echo "== 4. PyTorch peers (flash, cuDNN backward) on the same shapes"
timeout 300 python3 "$HERE/peers.py" --ours "$OUT/ours-wgmma.json" --attend "$ATTEND" --out "$OUT" 2>&1 | grep -v Warning | tee "$OUT/peers.log"; rc=${PIPESTATUS[0]}
echo "peers exit code: $rc"; [ "$rc" = 0 ] || status=1
echo "== done, exit $status"
exit $status
