#!/usr/bin/env bash
# bench/gpu/sparse.sh: the CUDA sparse record in one call on the device machine (no .NET SDK there: `attend` travels
# published, see docs/PERFORMANCE.md "CUDA sparse run").
#   1. attend check --backend cuda        every CUDA variant (flash bf16/fp16, float32 via bf16, decode) and the sparse
#                                         cases (static patterns, routing plans, vertical-slash plans on
#                                         column_sparse_forward.cu) vs float64, outputs poisoned
#   2. compute-sanitizer memcheck         the same check on one flash problem plus the decode and sparse cases
#   3. attend bench sparse --backend cuda every sparse method at 16k (workloads random, llm), then the methods whose
#                                         selectors and plans stay cheap at 128k, then the density sweep at 128k
# Usage: bash sparse.sh [--quick | --extra | --sweep]   (--extra: only a 128k bench on the llm workload and the density
# sweep; --sweep: only the 128k density sweep, flash windows beside the same bands on the token-level kernel)      Logs and JSON go to $OUT (or /tmp/attend-sparse).
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ATTEND="$HERE/attend/Attend.Cli"
OUT=${OUT:-/tmp/attend-sparse}
mkdir -p "$OUT"
export ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache
rm -rf "$ATTEND_CUDA_CACHE"
status=0
if [ "${1:-}" = "--sweep" ]; then   # the 128k density sweep alone: flash windows, the same bands on the token-level kernel
  echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  timeout 150 "$ATTEND" bench sparse --backend cuda --lengths 131072 --workloads random --runs 1 --methods streaming-llm \
    --json "$OUT/sparse-128k-sweep.json" > "$OUT/bench-128k-sweep.log" 2>&1; rc=$?
  grep -v "^  " "$OUT/bench-128k-sweep.log" | tail -4; echo "bench exit code: $rc"
  grep "^  " "$OUT/bench-128k-sweep.log" | cut -c1-230
  exit $rc
fi
if [ "${1:-}" = "--extra" ]; then   # a second look at 128k: the llm workload (random repeated beside it) and the density sweep
  echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  timeout 170 "$ATTEND" bench sparse --backend cuda --lengths 131072 --workloads llm --runs 1 \
    --methods streaming-llm,power-attention,moa,biformer,hip,longheads,cca,minference \
    --json "$OUT/sparse-128k-llm.json" > "$OUT/bench-128k-llm.log" 2>&1; rc=$?
  grep -v "^  " "$OUT/bench-128k-llm.log" | tail -4; echo "bench exit code: $rc"
  grep "^  " "$OUT/bench-128k-llm.log" | cut -c1-230
  exit $rc
fi
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GB"

echo "== 1. attend check --backend cuda"
timeout 100 "$ATTEND" check --backend cuda 2>&1 | tee "$OUT/check.log" | grep -v '^  ok   Cuda\|^  ok   Cpu\|^  ok   Reference\|^  skipped' ; rc=${PIPESTATUS[0]}
echo "check exit code: $rc"; [ "$rc" = 0 ] || status=1
if grep -q "NVRTC_ERROR\|CudaException\|CUDA_ERROR" "$OUT/check.log"; then echo "== compile or driver error: stopping"; exit 3; fi

echo "== 2. compute-sanitizer memcheck (one flash problem, decode and sparse cases)"
timeout 70 compute-sanitizer --tool memcheck --error-exitcode 9 "$ATTEND" check --backend cuda --cases 1 --seed 7 > "$OUT/sanitizer.log" 2>&1; rc=$?
grep -E "ERROR SUMMARY|Invalid|attend check:|FAIL" "$OUT/sanitizer.log" | head -20
echo "sanitizer exit code: $rc"; [ "$rc" = 0 ] || status=1
echo "== 2b. attend run --method NAME --backend cuda on .npy inputs (a block plan and a token-level plan)"
python3 -c "
import numpy as np
r = np.random.default_rng(5)
for n, s in [('q', (1, 1000, 8, 128)), ('k', (1, 1000, 2, 128)), ('v', (1, 1000, 2, 128))]: np.save('/tmp/sp_' + n + '.npy', r.standard_normal(s).astype(np.float32))
"
for m in streaming-llm minference biformer; do
  "$ATTEND" run --method $m --backend cuda --q /tmp/sp_q.npy --k /tmp/sp_k.npy --v /tmp/sp_v.npy --out /tmp/sp_o_$m.npy --lse /tmp/sp_l_$m.npy 2>&1 | head -6
  "$ATTEND" run --method $m --q /tmp/sp_q.npy --k /tmp/sp_k.npy --v /tmp/sp_v.npy --out /tmp/sp_c_$m.npy > /dev/null 2>&1
  python3 -c "
import numpy as np
g = np.load('/tmp/sp_o_$m.npy'); c = np.load('/tmp/sp_c_$m.npy')
print('  $m: cuda vs cpu rel L2 %.2e, NaN %d' % (np.linalg.norm(g - c) / np.linalg.norm(c), np.isnan(g).sum()))
"
done
[ "${1:-}" = "--quick" ] && { echo "== done (quick), exit $status"; exit $status; }

echo "== 3a. attend bench sparse --backend cuda, every method at 16k"
timeout 100 "$ATTEND" bench sparse --backend cuda --lengths 16384 --workloads random,llm --runs 1 --no-sweep \
  --json "$OUT/sparse-16k.json" > "$OUT/bench-16k.log" 2>&1; rc=$?
grep -v "^  " "$OUT/bench-16k.log" | tail -5; echo "bench 16k exit code: $rc"

echo "== 3b. attend bench sparse --backend cuda, 128k"
M128=streaming-llm,a-shape,power-attention,dilated-window,sinklora,moa,s2-attention,minference,anchor-attention,biformer,hip,longheads,cca,superlinear,flexprefill
timeout 120 "$ATTEND" bench sparse --backend cuda --lengths 131072 --workloads random,llm --runs 1 --methods "$M128" \
  --json "$OUT/sparse-128k.json" > "$OUT/bench-128k.log" 2>&1; rc=$?
grep -v "^  " "$OUT/bench-128k.log" | tail -5; echo "bench 128k exit code: $rc"
echo "== tables"
grep "^  " "$OUT/bench-16k.log" | cut -c1-230
grep "^  " "$OUT/bench-128k.log" | cut -c1-230
echo "== done, exit $status"
exit $status
