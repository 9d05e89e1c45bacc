#!/usr/bin/env bash
# delta-dvwide: one device call for the delta-rule backward past Dv = 128 (run from the carry folder .gpu-dvwide/).
# In parallel (NVRTC compiles on the CPU; separate disk caches):
#  1. attend check --backend cuda on the delta problems (forward, then every backward problem: Dv 64/128 and the wide
#     ones, Dv 192/256/320), the chunk kernel at its default 8 warps;
#  2. the wide backward problems alone (ATTEND_CHECK_CUDA_PARTS=delta-bwd-wide) with the chunk kernel at 4 warps;
#  3. compute-sanitizer memcheck (leak check on) on the wide backward problems.
# No bench: the delta bench's shapes are fixed at D = 128 (no switch for Dv). Logs go to $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== start $(date -u '+%H:%M:%S')"
ATTEND_CUDA_CACHE=$PWD/cache ATTEND_CHECK_CUDA_PARTS=delta,delta-bwd,delta-bwd-wide timeout ${CHECK_TIMEOUT:-240} \
  ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/check.log" 2>&1 &
p1=$!
ATTEND_CUDA_CACHE=$PWD/cache4 ATTEND_CHECK_DELTA_BWD_WARPS=4 ATTEND_CHECK_CUDA_PARTS=delta-bwd-wide timeout ${CHECK_TIMEOUT:-240} \
  ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/check-cw4.log" 2>&1 &
p2=$!
ATTEND_CUDA_CACHE=$PWD/cachem ATTEND_CHECK_CUDA_PARTS=delta-bwd-wide timeout ${SAN_TIMEOUT:-240} \
  compute-sanitizer --tool memcheck --leak-check full --print-limit 20 --error-exitcode 9 \
  ./attend/Attend.Cli check --backend cuda --cases 0 --seed 5 > "$OUT/memcheck.log" 2>&1 &
p3=$!
wait $p1; echo "check (delta: fwd + bwd incl. wide, cw8) rc=$?"
wait $p2; echo "check (delta-bwd-wide, cw4) rc=$?"
wait $p3; echo "memcheck (delta-bwd-wide) rc=$?"
grep -a -E "FAIL|attend check:|NVRTC|rror" "$OUT/check.log" | cut -c1-330
grep -a -E "Dv=(192|256|320)" "$OUT/check.log" | cut -c1-330
grep -a -E "FAIL|attend check:|rror|Dv=(192|256|320)" "$OUT/check-cw4.log" | cut -c1-330
grep -a -E "ERROR SUMMARY|LEAK SUMMARY|attend check:|Invalid|out of bounds|FAIL" "$OUT/memcheck.log" | head -12
echo "== done $(date -u '+%H:%M:%S')"
