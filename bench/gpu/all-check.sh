#!/usr/bin/env bash
# The coordinator's device calls for the whole CUDA backend after merging. Run from the carry folder (e.g. .gpu/), which
# holds the published attend in ./attend, this script, linear_peers.py, sparse-tail.sh and flash-linear-attention's
# `fla` package copied from its source mirror (never committed). Logs and JSON go to $OUT.
#
#   bash all-check.sh check    1. attend check --backend cuda: exact (forward, backward, decode), linear (chunked,
#                                 recurrent, backward with gates, feature maps), delta rules, sparse cases; float64 oracle
#                              2. compute-sanitizer memcheck on a small check (3 exact problems + every linear, delta and
#                                 sparse case)
#   bash all-check.sh bench    3. attend bench --backend cuda (every exact row: causal/full 4k-32k, windows, documents,
#                                 block-causal, D = 64, 16/16 heads, backward, decode)
#                              4. attend bench linear --backend cuda at T = 16k, B = 1, H = 16, D = 128, bf16 (forward,
#                                 forward+backward, the delta rules)
#                              5. linear_peers.py: fla's forwards of the delta rules, then GLA's forward+backward, beside
#                                 ours in the same call, its autotuner shortened (every config still tried)
#   bash all-check.sh sparse   6. the 128k sparse rows not yet measured (sparse-tail.sh --rest)
#   bash all-check.sh wtarget  7. issue 3's window target on this build: dense causal and window 1024 at 16k and 32k
#                                 (ATTEND_BENCH_PART=wtarget), two processes
#   bash all-check.sh routing  8. the Routing Transformer sorted by cluster vs its mask form (16k), sorted at 128k
#   bash all-check.sh merged   9. parts 1 and 2 side by side (separate kernel caches: both compile on a cold machine, the
#                                 16 CPU cores have room), then part 7 once the GPU is free again: one call under 600 s
#   bash all-check.sh verify  12. part 9 with a racecheck of the delta and KDA backward kernels (one problem each) beside
#                                 the check and the memcheck, then one window-target round
#   bash all-check.sh closing 13. part 12's three checks side by side, then the linear bench at 16k (no window target)
#   bash all-check.sh final   10. the linear and sparse checks (one exact problem) and their memcheck, the linear bench at
#                                 16k, and fla's GLA forward+backward beside ours (its autotune needs minutes)
#   bash all-check.sh peers   11. issue 5's same-call ratios: the linear bench at 16k, then fla's forward+backward for every
#                                 method, each verified first against linear_peers.py's float32 reference (its Hopper guard
#                                 for gated backward kernels bypassed, fla #640), then fla's forwards while time is left
#
# The kernel cache lives in /tmp/attend-cuda-cache, so a second part on a still-warm machine skips NVRTC.
set -u
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1 ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
part=${1:-check}
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') $part on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)" | tee "$OUT/gpu-$part.txt"
case $part in
check)
  timeout ${CHECK_TIMEOUT:-330} ./attend/Attend.Cli check --backend cuda > "$OUT/check.log" 2>&1
  echo "check exit $?"; grep -a -E "FAIL|attend check:|Exception" "$OUT/check.log" | cut -c1-240 | head -40
  timeout ${SAN_TIMEOUT:-200} compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    ./attend/Attend.Cli check --backend cuda --cases 3 --seed 1 > "$OUT/sanitizer.log" 2>&1
  echo "sanitizer exit $?"; grep -a -E "ERROR SUMMARY|LEAK SUMMARY|attend check:" "$OUT/sanitizer.log" | head -5
  ;;
bench)
  timeout ${BENCH_TIMEOUT:-200} ./attend/Attend.Cli bench --backend cuda --json "$OUT/exact-cuda.json" > "$OUT/bench-exact.log" 2>&1
  echo "bench exit $?"; grep -a -v "^\s*$" "$OUT/bench-exact.log" | cut -c1-200 | tail -40
  ATTEND_BENCH_LINEAR_T=16384 timeout ${LINEAR_TIMEOUT:-120} ./attend/Attend.Cli bench linear --backend cuda \
    --json "$OUT/linear-cuda.json" > "$OUT/bench-linear.log" 2>&1
  echo "bench linear exit $?"; cut -c1-200 "$OUT/bench-linear.log" | tail -40
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-120} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
    --methods delta,gated_delta --budget 0 --autotune-ms 5,20 2>&1 | grep -v Warning | tee "$OUT/peers.log"
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-160} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
    --methods gla --skip-forward --autotune-ms 5,20 2>&1 | grep -v Warning | tee "$OUT/peers-gla.log"
  ;;
sparse)
  OUT="$OUT" T128=${T128:-400} bash ./sparse-tail.sh --rest
  ;;
merged)
  timeout ${CHECK_TIMEOUT:-480} ./attend/Attend.Cli check --backend cuda > "$OUT/check.log" 2>&1 &
  check_pid=$!
  ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache-san timeout ${SAN_TIMEOUT:-480} compute-sanitizer --tool memcheck --leak-check full \
    --error-exitcode 9 ./attend/Attend.Cli check --backend cuda --cases 3 --seed 1 > "$OUT/sanitizer.log" 2>&1 &
  san_pid=$!
  wait $check_pid; echo "check exit $?"; grep -a -E "FAIL|attend check:|Exception" "$OUT/check.log" | cut -c1-240 | head -40
  wait $san_pid; echo "sanitizer exit $?"; grep -a -E "ERROR SUMMARY|LEAK SUMMARY|attend check:" "$OUT/sanitizer.log" | head -5
  for round in 1 2; do
    ATTEND_BENCH_PART=wtarget timeout 60 ./attend/Attend.Cli bench --backend cuda > "$OUT/wtarget-$round.log" 2>&1
    echo "wtarget $round exit $?"; grep -a -E "^  fwd" "$OUT/wtarget-$round.log" | cut -c1-220
  done
  ;;
verify|closing)
  timeout ${CHECK_TIMEOUT:-420} ./attend/Attend.Cli check --backend cuda > "$OUT/check.log" 2>&1 &
  check_pid=$!
  ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache-san timeout ${SAN_TIMEOUT:-420} compute-sanitizer --tool memcheck --leak-check full \
    --error-exitcode 9 ./attend/Attend.Cli check --backend cuda --cases 3 --seed 1 > "$OUT/sanitizer.log" 2>&1 &
  san_pid=$!
  ATTEND_CHECK_CUDA_PARTS=delta-bwd,kda-bwd ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache-race timeout ${RACE_TIMEOUT:-420} \
    compute-sanitizer --tool racecheck --error-exitcode 9 ./attend/Attend.Cli check --backend cuda --cases 1 --seed 2 > "$OUT/racecheck.log" 2>&1 &
  race_pid=$!
  wait $check_pid; echo "check exit $?"; grep -a -E "FAIL|attend check:|Exception" "$OUT/check.log" | cut -c1-240 | head -40
  wait $san_pid; echo "sanitizer exit $?"; grep -a -E "ERROR SUMMARY|LEAK SUMMARY|attend check:" "$OUT/sanitizer.log" | head -5
  wait $race_pid; echo "racecheck exit $?"; grep -a -E "RACECHECK SUMMARY|ERROR SUMMARY|hazard|attend check:" "$OUT/racecheck.log" | head -8
  if [[ $part == verify ]]; then
    ATTEND_BENCH_PART=wtarget timeout 60 ./attend/Attend.Cli bench --backend cuda > "$OUT/wtarget-1.log" 2>&1
    echo "wtarget exit $?"; grep -a -E "^  fwd" "$OUT/wtarget-1.log" | cut -c1-220
  else
    ATTEND_BENCH_LINEAR_T=16384 timeout ${LINEAR_TIMEOUT:-150} ./attend/Attend.Cli bench linear --backend cuda \
      --json "$OUT/linear-cuda.json" > "$OUT/bench-linear.log" 2>&1
    echo "bench linear exit $?"; grep -a -v "registers" "$OUT/bench-linear.log" | cut -c1-220 | tail -40
  fi
  ;;
final)
  ATTEND_CHECK_CUDA_PARTS=linear,sparse timeout ${CHECK_TIMEOUT:-240} ./attend/Attend.Cli check --backend cuda --cases 1 > "$OUT/check.log" 2>&1
  echo "check exit $?"; grep -a -E "FAIL|attend check:|Exception|refused as expected" "$OUT/check.log" | cut -c1-240 | head -40
  ATTEND_CHECK_CUDA_PARTS=linear,sparse timeout ${SAN_TIMEOUT:-200} compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    ./attend/Attend.Cli check --backend cuda --cases 1 --seed 1 > "$OUT/sanitizer.log" 2>&1
  echo "sanitizer exit $?"; grep -a -E "ERROR SUMMARY|LEAK SUMMARY|attend check:" "$OUT/sanitizer.log" | head -5
  ATTEND_BENCH_LINEAR_T=16384 timeout ${LINEAR_TIMEOUT:-120} ./attend/Attend.Cli bench linear --backend cuda \
    --json "$OUT/linear-cuda.json" > "$OUT/bench-linear.log" 2>&1
  echo "bench linear exit $?"; cut -c1-200 "$OUT/bench-linear.log" | tail -30
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-300} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
    --methods gla --skip-forward --autotune-ms 5,20 2>&1 | grep -v Warning | tee "$OUT/peers-gla.log"
  ;;
peers)
  ATTEND_BENCH_LINEAR_T=16384 timeout ${LINEAR_TIMEOUT:-150} ./attend/Attend.Cli bench linear --backend cuda \
    --json "$OUT/linear-cuda.json" > "$OUT/bench-linear.log" 2>&1
  echo "bench linear exit $?"; cut -c1-200 "$OUT/bench-linear.log" | tail -30
  export TRITON_CACHE_DIR=/tmp/triton-cache
  PYTHONPATH=$PWD timeout ${PEER_TIMEOUT:-380} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
    --methods ${PEER_METHODS:-gla,simple_gla,gated_delta,retnet,delta,linear_attn} --skip-forward --verify --bypass-hopper-guard \
    --autotune-ms 5,20 2>&1 | grep -v Warning | tee "$OUT/peers-fb.log"
  PYTHONPATH=$PWD timeout ${PEER_FWD_TIMEOUT:-60} python3 linear_peers.py --ours "$OUT/linear-cuda.json" --rep 100 --warmup 25 \
    --methods ${PEER_METHODS:-gla,simple_gla,gated_delta,retnet,delta,linear_attn} --budget 0 --autotune-ms 5,20 2>&1 \
    | grep -v Warning | tee "$OUT/peers-fwd.log"
  ;;
wtarget)
  for round in 1 2; do
    ATTEND_BENCH_PART=wtarget timeout ${BENCH_TIMEOUT:-150} ./attend/Attend.Cli bench --backend cuda > "$OUT/wtarget-$round.log" 2>&1
    echo "wtarget $round exit $?"; grep -a -E "^  fwd" "$OUT/wtarget-$round.log" | cut -c1-220
  done
  ;;
routing)
  timeout ${T16:-90} ./attend/Attend.Cli bench sparse --backend cuda --lengths 16384 --workloads random,llm --runs 2 --no-sweep \
    --methods "routing-transformer,routing-transformer[sorted=false]" --json "$OUT/routing-16k.json" > "$OUT/routing-16k.log" 2>&1
  echo "routing 16k exit $?"; grep -a -E "^  |exact causal|FAIL" "$OUT/routing-16k.log" | cut -c1-230
  timeout ${T128:-150} ./attend/Attend.Cli bench sparse --backend cuda --lengths 131072 --workloads random --runs 1 --no-sweep \
    --methods "routing-transformer" --json "$OUT/routing-128k.json" > "$OUT/routing-128k.log" 2>&1
  echo "routing 128k exit $?"; grep -a -E "^  |exact causal|FAIL" "$OUT/routing-128k.log" | cut -c1-230
  ;;
*) echo "usage: all-check.sh check|bench|sparse|wtarget|routing|merged|verify|closing|final|peers"; exit 2 ;;
esac
echo "== done $(date -u '+%H:%M:%S')"
