#!/usr/bin/env bash
# bench/gpu/bwd-wg.sh: one device call for the wgmma kernel work (session 3, cuda-bwd). Steps:
#   1. attend check --backend cuda with the defaults (backward: wgmma on Hopper), then with every switch in $CHECK_ALSO
#      (e.g. "ATTEND_CUDA_FWD_WGMMA=1"), NVRTC warnings of successful builds printed (ATTEND_CUDA_NVRTC_LOG=1);
#   2. compute-sanitizer memcheck on a small check, defaults and $CHECK_ALSO;
#   3. bench variants side by side, each "name:part:ENV=V,ENV=V" of $VARIANTS (part = ATTEND_BENCH_PART: backward,
#      core = causal forward 4k/16k + backward rows, fcore = those forward rows alone);
#   4. peers.py (SDPA flash/cuDNN/efficient, forward and backward) against the JSON of the first variant, no flex.
# Expects the published `attend` in ./attend and peers.py beside this script. Logs go to $OUT (at most 8 files come back:
# check.log, sanitizer.log, bench.log, ours-<first two variants>.json, peers.log, table.json).
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ATTEND="$HERE/attend/Attend.Cli"
OUT=${OUT:-/tmp/attend-gpu}
mkdir -p "$OUT"
export ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache PYTHONUNBUFFERED=1
rm -rf "$ATTEND_CUDA_CACHE"
status=0
VARIANTS=${VARIANTS:-"new:core:ATTEND_CUDA_FWD_WGMMA=1 base:core: fwdwg1:fcore:ATTEND_CUDA_FWD_WGMMA=1,ATTEND_CUDA_FWD_WG_MINB=1 bwdmma:backward:ATTEND_CUDA_BWD_WGMMA=0 wg3:backward:ATTEND_CUDA_BWD_WG_CTAS=3"}
CHECK_ALSO=${CHECK_ALSO:-"ATTEND_CUDA_FWD_WGMMA=1,ATTEND_CUDA_BWD_WG_CTAS=3"}
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
for envs in "" $CHECK_ALSO; do
  e=${envs//,/ }
  echo "== 1. attend check --backend cuda ${e:-(defaults)}"
  echo "== check ${e:-(defaults)}" >> "$OUT/check.log"
  env ATTEND_CUDA_NVRTC_LOG=1 $e timeout 300 "$ATTEND" check --backend cuda > /tmp/check.log 2>&1; rc=$?
  cat /tmp/check.log >> "$OUT/check.log"
  grep -a -E "FAIL|attend check:" /tmp/check.log | head -30
  grep -a -c "^  ok .*backward" /tmp/check.log | sed 's/^/backward problems ok: /'
  grep -a -E "C75" /tmp/check.log | sed 's/ in function/\n in function/' | grep -a "in function" | sort | uniq -c | head
  echo "check exit code: $rc"; [ "$rc" = 0 ] || status=1
  echo "== 2. compute-sanitizer memcheck (small check) ${e:-(defaults)}"
  echo "== memcheck ${e:-(defaults)}" >> "$OUT/sanitizer.log"
  env $e timeout 240 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 "$ATTEND" check --backend cuda --cases 3 --seed 1 > /tmp/san.log 2>&1; rc=$?
  cat /tmp/san.log >> "$OUT/sanitizer.log"
  grep -a -E "ERROR SUMMARY|LEAK SUMMARY|Invalid|attend check:" /tmp/san.log | head -10
  echo "sanitizer exit code: $rc"; [ "$rc" = 0 ] || status=1
done
echo "== 3. bench variants"
n=0; first=""
for spec in $VARIANTS; do
  name=${spec%%:*}; rest=${spec#*:}; part=${rest%%:*}; envs=${rest#*:}; e=${envs//,/ }
  echo "-- $name (ATTEND_BENCH_PART=$part $e)" | tee -a "$OUT/bench.log"
  env ATTEND_BENCH_PART=$part $e timeout 240 "$ATTEND" bench --backend cuda --json "/tmp/ours-$name.json" > "/tmp/bench-$name.log" 2>&1; rc=$?
  grep -a -E "^  fwd|bwd|FAIL|flash_forward D=" "/tmp/bench-$name.log"; cat "/tmp/bench-$name.log" >> "$OUT/bench.log"
  echo "bench $name exit code: $rc"; [ "$rc" = 0 ] || status=1
  n=$((n + 1)); [ $n -le 2 ] && cp "/tmp/ours-$name.json" "$OUT/"
  [ -z "$first" ] && first=$name
done
echo "== 4. PyTorch peers on the shapes of '$first'"
PEERS_NO_FLEX=1 timeout 300 python3 "$HERE/peers.py" --ours "/tmp/ours-$first.json" --attend "$ATTEND" --out "$OUT" 2>&1 | grep -v Warning | tee "$OUT/peers.log"; rc=${PIPESTATUS[0]}
echo "peers exit code: $rc"; [ "$rc" = 0 ] || status=1
echo "== done, exit $status"
exit $status
