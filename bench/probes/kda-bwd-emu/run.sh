#!/usr/bin/env bash
# Runs attend_kda_bwd_chunk's own source (linear_delta_bwd.cu, GATE 2, v1 on tensor cores) on the host: cuts the kernel and
# the helpers it uses out of the file, compiles them with g++ into harness.cpp (std::thread per CUDA thread, std::barrier
# for __syncthreads and per warp for ldmatrix / mma.sync / shuffles, which harness.cpp emulates with the PTX fragment
# layouts), and checks dq, dk, dv, dβ and d log α against finite differences (sampled) for (Dk, Dv, gate scale) runs.
# Needs g++ ≥ 11 (C++20). Usage: run.sh ["DK DV SCALE" ...] (default: four runs, a few minutes on 2 shared cores).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$root/src/Attend.Cuda/Kernels/linear_delta_bwd.cu" "$work/kernel.inc" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
# The shared helpers (after the includes, up to the reverse chain) and the GATE 2 section.
a = src.index('struct DeltaRow { int seq, tokStart, len, pad; };') + len('struct DeltaRow { int seq, tokStart, len, pad; };')
b = src.index('// attend_delta_bwd_dstate: the reverse chain')
helpers = src[a:b]
# Drop the helpers with inline PTX (the harness defines lds32 and sts32; cp_async4 is unused here).
for pat in [r'__device__ __forceinline__ unsigned lds32\(unsigned addr\)\n\{.*?\n\}\n',
            r'__device__ __forceinline__ void sts32\(.*?\n',
            r'__device__ __forceinline__ void cp_async4\(.*?\n\}\n']:
    helpers, n = re.subn(pat, '', helpers, count=1, flags=re.S)
    assert n == 1, pat
c = src.index('#define KT 256'); d = src.rindex('#endif   // GATE == 2')
k = src[c:d]
for old, new in [('extern __shared__ __align__(128) unsigned char smem[];', 'unsigned char* smem = g_smem;'),
                 ('extern "C" __global__ void __launch_bounds__(KT, 1)', 'void')]:
    assert old in k, old
    k = k.replace(old, new)
open(sys.argv[2], 'w').write(helpers + k)
PY
cp "$here/harness.cpp" "$work/"
status=0
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=("64 64 1" "64 64 40" "128 128 1" "128 64 8")
for run in "${runs[@]}"; do
    set -- $run
    g++ -O2 -std=c++20 -pthread -DDK=$1 -DDV=$2 ${EMU_FLAGS:-} -o "$work/h" "$work/harness.cpp"
    echo "Dk=$1 Dv=$2 gates x$3"
    "$work/h" $3 || status=1
done
echo "$([ $status -eq 0 ] && echo 'all within 2e-2 of the finite differences' || echo 'FAILED')"
exit $status
