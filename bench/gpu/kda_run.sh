#!/usr/bin/env bash
# One device call for Kimi Delta Attention on the GPU (run from the carry folder .gpu-kda-cuda/): attend check --backend
# cuda on the KDA problems (ATTEND_CHECK_CUDA_PARTS=kda, or $PARTS), compute-sanitizer memcheck on them, attend run
# --method kda --backend cuda against the CPU (chunked and recurrent forms), the kda (and gated_delta) rows of our bench at
# T = 16k (JSON), then flash-linear-attention's chunk_kda beside it (fla's package copied into this folder). Logs go to $OUT.
#   kda_run.sh all      check, memcheck, run --method, bench, peers
#   kda_run.sh nopeers  the same without fla
#   kda_run.sh peers    only the bench and fla
set -u
export PYTHONUNBUFFERED=1
export ATTEND_CUDA_CACHE=$PWD/cache
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
part=${1:-all}
[[ -f nvrtc-cache.tgz ]] && tar xzf nvrtc-cache.tgz
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
if [[ $part != peers ]]; then
  ATTEND_CHECK_CUDA_PARTS=${PARTS:-kda} timeout ${CHECK_TIMEOUT:-200} ./attend/Attend.Cli check --backend cuda --cases 0 > "$OUT/check.log" 2>&1
  echo "check rc=$?"
  grep -E "FAIL|attend check|NVRTC|rror" "$OUT/check.log" | cut -c1-320
  grep -E "ok .*(CudaKda|kda route)" "$OUT/check.log" | cut -c1-320
  ATTEND_CHECK_CUDA_PARTS=kda timeout ${SAN_TIMEOUT:-150} compute-sanitizer --tool memcheck --print-limit 20 ./attend/Attend.Cli check --backend cuda --cases 0 --seed 3 > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$?"
  grep -E "ERROR SUMMARY|attend check|Invalid|out of bounds|FAIL" "$OUT/memcheck.log" | head -8
  python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(11)
T, H, D = 777, 4, 128
for n in "qkv": np.save(f"/tmp/m_{n}.npy", rng.standard_normal((1, T, H, D)).astype(np.float32))
np.save("/tmp/m_g.npy", (-np.log1p(np.exp(-rng.standard_normal((1, T, H, D)))) / 4).astype(np.float32))
np.save("/tmp/m_beta.npy", (1 / (1 + np.exp(-rng.standard_normal((1, T, H))))).astype(np.float32))
PY
  io="--q /tmp/m_q.npy --k /tmp/m_k.npy --v /tmp/m_v.npy --input g=/tmp/m_g.npy --input beta=/tmp/m_beta.npy"
  for m in "kda" "kda --param form=recurrent"; do
    ./attend/Attend.Cli run --method $m $io --out /tmp/o_gpu.npy --backend cuda 2>&1 | head -4
    ./attend/Attend.Cli run --method $m $io --out /tmp/o_cpu.npy > /dev/null 2>&1 && [[ -f /tmp/o_gpu.npy ]] && \
      python3 -c "import numpy as np; a=np.load('/tmp/o_gpu.npy'); b=np.load('/tmp/o_cpu.npy'); print('  $m: rel L2 vs cpu %.2e' % (np.linalg.norm(a-b)/np.linalg.norm(b)))"
    rm -f /tmp/o_gpu.npy /tmp/o_cpu.npy
  done 2>&1 | tee "$OUT/run-method.log"
fi
export ATTEND_BENCH_LINEAR_T=16384 ATTEND_BENCH_LINEAR_DELTA_ONLY=1 ATTEND_BENCH_DELTA_METHODS=${BENCH_METHODS:-kda,gated_delta}
timeout ${BENCH_TIMEOUT:-120} ./attend/Attend.Cli bench linear --backend cuda --json "$OUT/linear-cuda.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -E "^(method|delta|gated_delta|kda|ceilings)|linear_delta|rror" "$OUT/bench.log" | cut -c1-300
if [[ $part != nopeers ]]; then
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-200} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
    --methods ${PEER_METHODS:-kda} --autotune-ms 5,20 --budget ${PEER_BUDGET:-100} 2>&1 | grep -v Warning | tee "$OUT/peers.log"
fi
tar czf "$OUT/nvrtc-cache.tgz" cache 2>/dev/null && ls -la "$OUT/nvrtc-cache.tgz"
