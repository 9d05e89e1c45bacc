#!/usr/bin/env bash
# cuda-speed: full record (check, memcheck, bench, peers) + racecheck on a small check + backward A/B + forward probe
# Runs from the carry folder on the device machine (docs/CUDA-KERNELS.md, "How to re-run"): the published attend in
# ./attend and copies of run.sh, peers.py, kernel_probe.py and src/Attend.Cuda/Kernels/*.cu, *.cuh beside this script.
# Logs go to $OUT.
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1
bash run.sh "$@" 2>&1 | grep -v "^  ok "
echo "== racecheck (small check)"
timeout 150 compute-sanitizer --tool racecheck ./attend/Attend.Cli check --backend cuda --cases 2 --seed 3 > $OUT/racecheck.log 2>&1; echo "racecheck exit $?"
grep -E "RACECHECK SUMMARY|ERROR SUMMARY|hazard|attend check:" $OUT/racecheck.log | head -8
echo "== backward with non-volatile mma asm (ATTEND_CUDA_BWD_NOVOLATILE=1)"
ATTEND_BENCH_PART=backward ATTEND_CUDA_BWD_NOVOLATILE=1 timeout 120 ./attend/Attend.Cli bench --backend cuda 2>&1 | grep -E "bwd|ceilings" | tee $OUT/probe.log
echo "== probe"
timeout 200 python3 kernel_probe.py flash_forward.cu 2>&1 | tee -a $OUT/probe.log | grep -v "^  ok"
