#!/usr/bin/env bash
# bench/gpu/sparse-tail.sh: issue 4's remaining GPU rows in one device call (helper sparse-tail, 2026-11-22).
#   1. attend check --backend cuda --cases 1   one flash problem, the decode cases and every sparse case (new: MInference's plan
#                                              and a random plan under SlashCoverage.Blocks, retrieval tokens and an axial grid
#                                              flattened through IMaskRowWords), all against float64, outputs poisoned
#   2. 16k: minference with both slash coverages (diagonals = token level, blocks = the authors' covering ranges)
#   3. 128k: the methods not yet run at 128k on the GPU (host flattening now a word per row), MInference's two coverages
#      first. One process (the 128k inputs and the exact run are made once); cases in priority order, JSON after each, so
#      a run cut by its timeout keeps what it measured.
# Usage: bash sparse-tail.sh [--rest]   (the published attend in ./attend; --rest: only the 128k rows the first call's cap cut). Logs and JSON go to $OUT (or /tmp/attend-sparse-tail).
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ATTEND="$HERE/attend/Attend.Cli"
OUT=${OUT:-/tmp/attend-sparse-tail}
mkdir -p "$OUT"
export ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $(nproc) cores"
if [ "${1:-}" = "--rest" ]; then   # the 128k rows the first call's cap cut (selectors now use every core), axial again
  timeout ${T128:-150} "$ATTEND" bench sparse --backend cuda --lengths 131072 --workloads random --runs 1 --no-sweep \
    --methods "axial,landmark,recycled,routing-transformer,retrieval-attention,flexprefill" \
    --json "$OUT/sparse-128k-rest.json" > "$OUT/bench-128k-rest.log" 2>&1; echo "bench 128k exit code: $?"
  grep "^  \|exact causal\|FAILED" "$OUT/bench-128k-rest.log" | cut -c1-230
  echo "== done $(date -u '+%H:%M:%S')"; exit 0
fi
echo "== 1. attend check --backend cuda --cases 1"
timeout 60 "$ATTEND" check --backend cuda --cases 1 > "$OUT/check.log" 2>&1; rc=$?
grep -v '^  ok   Cuda\|^  ok   Cpu\|^  ok   Reference\|^  skipped' "$OUT/check.log" | cut -c1-200 | tail -30
grep -i "blocks\|retrieval\|axial" "$OUT/check.log" | cut -c1-200
echo "check exit code: $rc"
if grep -q "NVRTC_ERROR\|CudaException\|CUDA_ERROR" "$OUT/check.log"; then echo "== compile or driver error: stopping"; exit 3; fi
echo "== 2. 16k: minference, diagonals vs blocks"
timeout 45 "$ATTEND" bench sparse --backend cuda --lengths 16384 --workloads random,llm --runs 2 --no-sweep \
  --methods "minference,minference[coverage=blocks]" --json "$OUT/sparse-16k.json" > "$OUT/bench-16k.log" 2>&1; echo "bench 16k exit code: $?"
grep "^  \|exact causal" "$OUT/bench-16k.log" | cut -c1-230
echo "== 3. 128k"
timeout ${T128:-150} "$ATTEND" bench sparse --backend cuda --lengths 131072 --workloads random --runs 1 --no-sweep \
  --methods "minference,minference[coverage=blocks],axial,delta,recycled,landmark,routing-transformer,retrieval-attention,flexprefill" \
  --json "$OUT/sparse-128k.json" > "$OUT/bench-128k.log" 2>&1; echo "bench 128k exit code: $?"
grep "^  \|exact causal\|FAILED" "$OUT/bench-128k.log" | cut -c1-230
echo "== done $(date -u '+%H:%M:%S')"
