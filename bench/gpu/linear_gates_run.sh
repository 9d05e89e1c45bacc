#!/usr/bin/env bash
# One device call for the gated linear backward (linear-gates; run from the carry folder .gpu-linear-gates/, which holds
# the published attend in ./attend, this script, linear_peers.py and flash-linear-attention's `fla` package copied from
# /work/main/.gpu/fla — never committed):
#   1. attend check --backend cuda --cases 0     linear (forward, backward incl. simple GLA / GLA with dg), decode, sparse
#   2. compute-sanitizer memcheck                on the same check (fixed seed)
#   3. attend bench linear --backend cuda        forward and forward+backward at T = 16k, B = 1, H = 16, D = 128, bf16
#   4. linear_peers.py (part `all` only)         fla's forward+backward for simple GLA and GLA (gate gradients included)
#                                                on the same shape, autotune timing shortened (every config still tried)
# Logs and JSON go to $OUT.   Usage: bash linear_gates_run.sh [all|nopeers|peers|final]
#   final: bench, peers, then the check (no memcheck, no run --method): the second call, where the ratio comes first.
set -u
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1 ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
part=${1:-all}
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
if [[ $part == final ]]; then
  ATTEND_BENCH_LINEAR_T=16384 timeout ${BENCH_TIMEOUT:-150} ./attend/Attend.Cli bench linear --backend cuda --json "$OUT/linear-cuda.json" 2>&1 | tee "$OUT/bench-linear.log"
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-240} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --skip-forward --warmup 25 --rep 100 \
    --methods ${PEER_METHODS:-simple_gla,gla} --autotune-ms 5,20 2>&1 | tee "$OUT/peers.log" | grep -v Warning
  timeout ${CHECK_TIMEOUT:-200} ./attend/Attend.Cli check --backend cuda --cases 0 2>&1 | tee "$OUT/check.log" | grep -v "^  ok " | tail -12
  echo "check exit ${PIPESTATUS[0]}"
  grep "CudaLinear backward" "$OUT/check.log" | grep -i gate
  exit 0
fi
if [[ $part != peers ]]; then
  timeout ${CHECK_TIMEOUT:-200} ./attend/Attend.Cli check --backend cuda --cases 0 2>&1 | tee "$OUT/check.log" | grep -v "^  ok " | tail -30
  echo "check exit ${PIPESTATUS[0]}"
  grep "CudaLinear backward" "$OUT/check.log"
  if [[ ${SANITIZE:-1} == 1 ]]; then
    timeout ${SANITIZE_TIMEOUT:-150} compute-sanitizer --tool memcheck --error-exitcode 9 ./attend/Attend.Cli check --backend cuda --cases 0 --seed 1 > "$OUT/sanitizer.log" 2>&1
    echo "sanitizer exit $?"; grep -E "ERROR SUMMARY|attend check:|FAIL" "$OUT/sanitizer.log" | head -8
  fi
fi
if [[ $part != peers ]]; then
  # attend run --method NAME --backend cuda on the linear family, against the CPU on the same .npy inputs.
  python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(7)
T, H, D = 777, 4, 128
for n in "qkv": np.save(f"/tmp/m_{n}.npy", rng.standard_normal((1, T, H, D)).astype(np.float32))
np.save("/tmp/m_g.npy", (-np.log1p(np.exp(-rng.standard_normal((1, T, H, D)))) / 16).astype(np.float32))
PY
  io="--q /tmp/m_q.npy --k /tmp/m_k.npy --v /tmp/m_v.npy"
  for m in "linear-attention" "linear-attention --param map=relu" "retnet" "gla --input g=/tmp/m_g.npy" "lightning-attention" "based"; do
    ./attend/Attend.Cli run --method $m $io --out /tmp/o_gpu.npy --backend cuda 2>&1 | head -3
    ./attend/Attend.Cli run --method $m $io --out /tmp/o_cpu.npy > /dev/null 2>&1 && [[ -f /tmp/o_gpu.npy ]] && \
      python3 -c "import numpy as np; a=np.load('/tmp/o_gpu.npy'); b=np.load('/tmp/o_cpu.npy'); print('  $m: rel L2 vs cpu %.2e' % (np.linalg.norm(a-b)/np.linalg.norm(b)))"
    rm -f /tmp/o_gpu.npy /tmp/o_cpu.npy
  done 2>&1 | tee "$OUT/run-method.log"
fi
ATTEND_BENCH_LINEAR_T=16384 timeout ${BENCH_TIMEOUT:-150} ./attend/Attend.Cli bench linear --backend cuda --json "$OUT/linear-cuda.json" 2>&1 | tee "$OUT/bench-linear.log"
if [[ $part != nopeers ]]; then
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-240} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --skip-forward \
    --methods ${PEER_METHODS:-simple_gla,gla} --autotune-ms 5,20 2>&1 | tee "$OUT/peers.log" | grep -v Warning
fi
