#!/usr/bin/env bash
# bench/gpu/window_run.sh: one device call for issue 3's window target (sliding-window causal 1024 at 32k ≥ 0.9× our own
# dense causal kernel's TFLOP/s on the computed blocks; session 4, cuda-window). Steps:
#   1. attend check --backend cuda on the exact forward problems (ATTEND_CHECK_PART=forward: windows, documents, causal,
#      GQA, fully masked rows, D = 64/128/256, soft cap, ALiBi, varlen, prebuilt block masks; f32/f16/bf16), with the
#      defaults and with each switch set of $CHECK_ALSO; NVRTC/ptxas warnings of the forward kernels counted;
#   2. compute-sanitizer memcheck on the first 4 forward problems (the 4th is the window with fully masked rows), defaults
#      and $CHECK_ALSO;
#   3. the target's rows (ATTEND_BENCH_PART=wtarget: dense causal and window 1024 causal at 16k and 32k, protocol shape),
#      one process per variant of $VARIANTS ("name:ENV=V,ENV=V"), the list run $ROUNDS times in turn so every variant
#      has a spread; each row prints TFLOP/s on visible pairs and on computed blocks (128 × 64 tiles of the plan);
#   4. a table: per process, window / dense on computed blocks at 16k and 32k (same process), and against the best dense.
# Expects the published `attend` in ./attend beside this script. Logs go to $OUT (check.log, sanitizer.log, bench.log,
# table.txt).
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ATTEND="$HERE/attend/Attend.Cli"
OUT=${OUT:-/tmp/attend-gpu}
mkdir -p "$OUT"
export ATTEND_CUDA_CACHE=/tmp/attend-cuda-cache PYTHONUNBUFFERED=1
status=0
VARIANTS=${VARIANTS:-"new: off:ATTEND_CUDA_FWD_WGSKIP=0 heavy:ATTEND_CUDA_FWD_WGSKIP=heavy nom32:ATTEND_CUDA_FWD_MASK32=0"}
CHECK_ALSO=${CHECK_ALSO:-"ATTEND_CUDA_FWD_MASK32=0"}
ROUNDS=${ROUNDS:-3}
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader)"
for envs in "" $CHECK_ALSO; do
  e=${envs//,/ }
  echo "== 1. attend check --backend cuda, forward problems, ${e:-(defaults)}"
  echo "== check ${e:-(defaults)}" >> "$OUT/check.log"
  env ATTEND_CHECK_PART=forward ATTEND_CUDA_NVRTC_LOG=1 $e timeout 240 "$ATTEND" check --backend cuda > /tmp/check.log 2>&1; rc=$?
  tr -d '\000' < /tmp/check.log >> "$OUT/check.log"
  tr -d '\000' < /tmp/check.log | grep -a -E "FAIL|attend check:|NVRTC:" | cut -c1-240 | head -30
  tr -d '\000' < /tmp/check.log | grep -a -o -E "warning.{0,6}C75[0-9][0-9]" | sort | uniq -c | head
  echo "check exit code: $rc"; [ "$rc" = 0 ] || status=1
  echo "== 2. compute-sanitizer memcheck (4 forward problems) ${e:-(defaults)}"
  echo "== memcheck ${e:-(defaults)}" >> "$OUT/sanitizer.log"
  env ATTEND_CHECK_PART=forward $e timeout 180 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    "$ATTEND" check --backend cuda --cases 4 --seed 1 > /tmp/san.log 2>&1; rc=$?
  cat /tmp/san.log >> "$OUT/sanitizer.log"
  grep -a -E "ERROR SUMMARY|LEAK SUMMARY|Invalid|attend check:" /tmp/san.log | head -10
  echo "sanitizer exit code: $rc"; [ "$rc" = 0 ] || status=1
done
echo "== 3. bench: ATTEND_BENCH_PART=wtarget, variants: $VARIANTS, $ROUNDS round(s)"
for round in $(seq 1 "$ROUNDS"); do
  for spec in $VARIANTS; do
    name=${spec%%:*}; envs=${spec#*:}; e=${envs//,/ }
    echo "-- $name round $round (${e:-defaults})" | tee -a "$OUT/bench.log"
    env ATTEND_BENCH_PART=wtarget $e timeout 150 "$ATTEND" bench --backend cuda > /tmp/bench.log 2>&1; rc=$?
    cat /tmp/bench.log >> "$OUT/bench.log"
    grep -a -E "^  fwd|FAIL|flash_forward D=" /tmp/bench.log | cut -c1-200
    echo "bench $name exit code: $rc"; [ "$rc" = 0 ] || status=1
  done
done
echo "== 4. window 1024 / dense causal, TFLOP/s on computed blocks (and on visible pairs)" | tee "$OUT/table.txt"
awk '
  /^-- / { run = $2 " r" $4; runs[++n] = run }
  /^  fwd causal  / || /^  fwd window 1024 causal/ {
    kind = ($2 == "causal") ? "dense" : "window"
    t = $0; sub(/.*T= */, "", t); sub(/ .*/, "", t)
    v = $0; sub(/ TFLOP\/s.*/, "", v); sub(/.* /, "", v)
    c = $0; sub(/ on computed blocks.*/, "", c); sub(/.*\(/, "", c)
    vis[run, kind, t] = v; comp[run, kind, t] = c
    if (kind == "dense" && c + 0 > best[t] + 0) best[t] = c
  }
  END {
    printf "%-12s %8s %8s %8s %8s | %8s %8s %8s %8s | %s\n", "process", "dense16k", "win16k", "dense32k", "win32k", "ratio16k", "ratio32k", "vs best", "vis32k", "(computed blocks; vis = visible pairs)"
    for (i = 1; i <= n; i++) {
      r = runs[i]
      if (comp[r, "dense", 32768] == "" || comp[r, "window", 32768] == "") continue
      printf "%-12s %8s %8s %8s %8s | %8.3f %8.3f %8.3f %8.3f\n", r, comp[r, "dense", 16384], comp[r, "window", 16384], comp[r, "dense", 32768], comp[r, "window", 32768],
        comp[r, "window", 16384] / comp[r, "dense", 16384], comp[r, "window", 32768] / comp[r, "dense", 32768], comp[r, "window", 32768] / best[32768],
        vis[r, "window", 32768] / vis[r, "dense", 32768]
    }
    printf "best dense on computed blocks: 16k %s, 32k %s\n", best[16384], best[32768]
  }' "$OUT/bench.log" | tee -a "$OUT/table.txt"
echo "== done $(date -u '+%H:%M:%S'), exit $status"
exit $status
