#!/usr/bin/env bash
# kda-v1's A/B device call (run from the carry folder .gpu-kda-v1/): A = ./attend, the build under test (the diagonal
# 16 x 16 blocks of attend_kda_bwd_chunk split again on tensor cores, levels 8 and 4, exact groups of 4); B =
# ./attend-exact, the same build with the previous kernel (exact diagonal blocks): only Attend.Cuda.dll, the apphost, its
# deps/runtimeconfig and libhostfxr/libhostpolicy are real files there, the rest links to ./attend. A's KDA checks (forward
# and backward) with memcheck and racecheck of the backward side by side, then the kda rows of the linear bench at T = 16k
# for A, B, A (the spread). Logs go to $OUT. Run once (call 3, 20:26 UTC): A 2.690 / 2.686 ms, B 1.141 ms for the chunk
# kernel (A spilled: 255 registers + 160 B local), so A was reverted; the levels' code is in the branch's history (commit
# "the diagonal 16x16 blocks split again on tensor cores").
set -u
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)" | tee "$OUT/gpu.txt"
ATTEND_CHECK_CUDA_PARTS=kda,kda-bwd ATTEND_CUDA_CACHE=/tmp/cache-a timeout 300 ./attend/Attend.Cli check --backend cuda > "$OUT/check.log" 2>&1 &
check_pid=$!
ATTEND_CHECK_CUDA_PARTS=kda-bwd ATTEND_CUDA_CACHE=/tmp/cache-san timeout 300 \
  compute-sanitizer --tool memcheck --error-exitcode 9 ./attend/Attend.Cli check --backend cuda --cases 1 --seed 1 > "$OUT/memcheck.log" 2>&1 &
san_pid=$!
ATTEND_CHECK_CUDA_PARTS=kda-bwd ATTEND_CUDA_CACHE=/tmp/cache-race timeout 300 \
  compute-sanitizer --tool racecheck --error-exitcode 9 ./attend/Attend.Cli check --backend cuda --cases 1 --seed 2 > "$OUT/racecheck.log" 2>&1 &
race_pid=$!
# B's kernels compile meanwhile (the first bench of each build would otherwise time NVRTC into nothing, but warm-up hides it).
wait $check_pid; echo "check exit $?"; grep -a -E "FAIL|attend check:|Exception" "$OUT/check.log" | cut -c1-200 | head -20
wait $san_pid; echo "memcheck exit $?"; grep -a -E "ERROR SUMMARY|attend check:" "$OUT/memcheck.log" | head -4
wait $race_pid; echo "racecheck exit $?"; grep -a -E "RACECHECK SUMMARY|attend check:" "$OUT/racecheck.log" | head -4
for v in A B A2; do
  dir=attend; cache=/tmp/cache-a
  [[ $v == B ]] && { dir=attend-exact; cache=/tmp/cache-b; }
  ATTEND_BENCH_LINEAR_T=16384 ATTEND_BENCH_LINEAR_DELTA_ONLY=1 ATTEND_BENCH_DELTA_METHODS=kda ATTEND_CUDA_CACHE=$cache \
    timeout 150 ./$dir/Attend.Cli bench linear --backend cuda --json "$OUT/linear-$v.json" > "$OUT/bench-$v.log" 2>&1
  echo "bench $v ($dir) exit $?"; grep -a -E "^kda|attend_kda_bwd_chunk|attend_kda_prepare" "$OUT/bench-$v.log" | cut -c1-200
done
grep -a "backward" "$OUT/check.log" | grep -a kda | cut -c1-60,110-250
