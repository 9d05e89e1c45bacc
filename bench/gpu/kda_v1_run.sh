#!/usr/bin/env bash
# kda-v1's device call (run from the carry folder .gpu-kda-v1/, which holds the published attend in ./attend): the KDA
# forward and backward checks (ATTEND_CHECK_CUDA_PARTS=kda,kda-bwd: 23 + 16 problems, float64 oracle), compute-sanitizer
# memcheck and racecheck of the KDA backward on one problem each (side by side with the check, separate kernel caches),
# then, with the GPU free again, the kda and gated_delta rows of the linear bench at T = 16k (bf16, B = 1, H = 16,
# Dk = Dv = 128; the backward split into recompute, reverse chain and chunk kernel; registers and local memory of every
# loaded kernel), then Nsight Compute on one launch of attend_kda_bwd_chunk at T = 16k (NCU=0 skips it). Logs and JSON go
# to $OUT.
set -u
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader)" | tee "$OUT/gpu.txt"
ATTEND_CHECK_CUDA_PARTS=${PARTS:-kda,kda-bwd} ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache timeout ${CHECK_TIMEOUT:-300} \
  ./attend/Attend.Cli check --backend cuda > "$OUT/check.log" 2>&1 &
check_pid=$!
ATTEND_CHECK_CUDA_PARTS=kda-bwd ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache-san timeout ${SAN_TIMEOUT:-300} \
  compute-sanitizer --tool memcheck --error-exitcode 9 ./attend/Attend.Cli check --backend cuda --cases 1 --seed 1 > "$OUT/memcheck.log" 2>&1 &
san_pid=$!
ATTEND_CHECK_CUDA_PARTS=kda-bwd ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache-race timeout ${RACE_TIMEOUT:-300} \
  compute-sanitizer --tool racecheck --error-exitcode 9 ./attend/Attend.Cli check --backend cuda --cases 1 --seed 2 > "$OUT/racecheck.log" 2>&1 &
race_pid=$!
wait $check_pid; echo "check exit $?"; grep -a -E "FAIL|attend check:|Exception|rror" "$OUT/check.log" | cut -c1-260 | head -30
grep -a -E "kda" "$OUT/check.log" | cut -c1-260 | head -60 > "$OUT/check-kda.txt"
wait $san_pid; echo "memcheck exit $?"; grep -a -E "ERROR SUMMARY|attend check:|Invalid" "$OUT/memcheck.log" | head -6
wait $race_pid; echo "racecheck exit $?"; grep -a -E "RACECHECK SUMMARY|ERROR SUMMARY|hazard|attend check:" "$OUT/racecheck.log" | head -8
ATTEND_BENCH_LINEAR_T=16384 ATTEND_BENCH_LINEAR_DELTA_ONLY=1 ATTEND_BENCH_DELTA_METHODS=${BENCH_METHODS:-kda,gated_delta} \
  ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache timeout ${BENCH_TIMEOUT:-150} ./attend/Attend.Cli bench linear --backend cuda \
  --json "$OUT/linear-cuda.json" > "$OUT/bench.log" 2>&1
echo "bench exit $?"; grep -a -v "^\s*$" "$OUT/bench.log" | cut -c1-240 | tail -30
if [[ ${NCU:-1} == 1 ]]; then
  ATTEND_BENCH_LINEAR_T=16384 ATTEND_BENCH_LINEAR_DELTA_ONLY=1 ATTEND_BENCH_DELTA_METHODS=kda ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache \
    timeout ${NCU_TIMEOUT:-200} ncu --kernel-name attend_kda_bwd_chunk --launch-count 1 --clock-control none \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section InstructionStats \
    --section SourceCounters ./attend/Attend.Cli bench linear --backend cuda > "$OUT/ncu.txt" 2>&1
  echo "ncu exit $?"
  grep -a -E "Duration|Throughput|Registers|Achieved Occupancy|Executed Ipc A|Issue Slots Busy|No Eligible|Stall|Bank|Warp Cycles Per Issued" "$OUT/ncu.txt" | head -40
fi
echo "== kda-bwd check lines"; grep -a backward "$OUT/check-kda.txt" | cut -c1-175
