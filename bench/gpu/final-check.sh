#!/usr/bin/env bash
# cuda-speed: correctness of the final composite (plain + partial-heavy forward specialisations, new decode)
# Runs from the carry folder on the device machine (docs/CUDA-KERNELS.md, "How to re-run"): the published attend in
# ./attend and copies of run.sh, peers.py, kernel_probe.py and src/Attend.Cuda/Kernels/*.cu, *.cuh beside this script.
# Logs go to $OUT.
cd "$(dirname "$0")"
export ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache
timeout 200 ./attend/Attend.Cli check --backend cuda 2>&1 | tee $OUT/check.log | grep -v "^  ok "
timeout 150 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 ./attend/Attend.Cli check --backend cuda --cases 3 --seed 1 > $OUT/sanitizer.log 2>&1; echo "sanitizer exit $?"
grep -E "ERROR SUMMARY|LEAK SUMMARY|attend check:" $OUT/sanitizer.log | head
timeout 150 ./attend/Attend.Cli bench --backend cuda --json $OUT/ours.json 2>&1 | tee $OUT/bench.log
