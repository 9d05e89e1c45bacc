#!/usr/bin/env bash
# Runs attend_kda_bwd_chunk's own source (linear_delta_bwd.cu, GATE 2) on the host: extracts the kernel, compiles it with
# g++ into harness.cpp (std::thread per CUDA thread, std::barrier for __syncthreads), and checks dq, dk, dv, dβ and
# d log α against finite differences for five (Dk, Dv, gate scale) runs (≈ 1–2 min on 2 shared cores). Needs g++ ≥ 11 (C++20).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$root/src/Attend.Cuda/Kernels/linear_delta_bwd.cu" "$work/kernel.inc" <<'PY'
import sys
src = open(sys.argv[1]).read()
a = src.index('#define KT 256'); b = src.rindex('#endif   // GATE == 2')
k = src[a:b]
for old, new in [('__device__ __forceinline__ float ld_elem(const elem_t* p) { return elem_lo((unsigned)*p); }', ''),
                 ('extern __shared__ __align__(128) unsigned char smem[];', 'unsigned char* smem = g_smem;'),
                 ('extern "C" __global__ void __launch_bounds__(KT)', 'void')]:
    assert old in k, old
    k = k.replace(old, new)
open(sys.argv[2], 'w').write(k)
PY
cp "$here/harness.cpp" "$work/"
status=0
# (Dk, Dv, gate scale): Dk = Dv, Dk < Dv and Dk > Dv (an index that mixes them up fails one), weak to past e^-80.
for run in "8 8 1" "8 8 40" "16 24 0.05" "16 24 8" "24 8 1"; do
    set -- $run
    g++ -O2 -std=c++20 -pthread -DDK=$1 -DDV=$2 -o "$work/h" "$work/harness.cpp"
    echo "Dk=$1 Dv=$2 gates x$3"
    "$work/h" $3 || status=1
done
echo "$([ $status -eq 0 ] && echo 'all within 1e-4 of the finite differences' || echo 'FAILED')"
exit $status
