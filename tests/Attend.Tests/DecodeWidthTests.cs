using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using Attend.Kernels.Cpu;
using Xunit;
using Xunit.Abstractions;

namespace Attend.Tests;

/// <summary>
/// The split-KV decode work at every vector width. The registered variant picks the widest width the machine has,
/// so on this machine only that one would run through <see cref="Attention"/>; Arm64 runs the 128-bit instantiation,
/// which these tests reach directly.
/// </summary>
public unsafe class DecodeWidthTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    public void DecodeMatchesReferenceAtEveryWidth(int width)
    {
        bool accelerated = width switch { 512 => Isa512.IsSupported, 256 => Isa256.IsSupported, _ => Isa128.IsSupported };
        if (!accelerated)
        {
            output.WriteLine($"skip: Vector{width} is not accelerated here");
            return;
        }
        var rng = TestData.Rng(9000 + width);
        foreach ((int tq, int tk, int h, int hkv, int d) in new[] { (1, 1000, 8, 2, 128), (3, 70, 6, 3, 80), (16, 130, 4, 1, 32), (5, 3, 2, 2, 64) })
        {
            float[] q = TestData.Gaussian<float>(rng, (long)tq * h * d);
            float[] k = TestData.Gaussian<float>(rng, (long)tk * hkv * d);
            float[] v = TestData.Gaussian<float>(rng, (long)tk * hkv * d);
            float[] o = TestData.Poisoned<float>(q.Length);
            float[] lse = TestData.Poisoned<float>((long)h * tq);
            var options = new AttentionOptions { Mask = new CausalMask() };
            TensorSpan<float> tQ = TestData.Bthd(q, 1, tq, h, d), tK = TestData.Bthd(k, 1, tk, hkv, d), tV = TestData.Bthd(v, 1, tk, hkv, d);
            TensorSpan<float> tO = TestData.Bthd(o, 1, tq, h, d), tL = AttentionLayout.Lse(lse, 1, h, tq);
            AttentionShape shape = AttentionShape.Validate<float>(tQ, tK, tV, options);
            fixed (float* pq = q, pk = k, pv = v, po = o, pl = lse)
            {
                var call = new ForwardCall<float>
                {
                    Shape = shape,
                    Blocks = BlockMask.Create(new CausalMask(), tq, tk),
                    Q = Views.Of<float>(tQ, pq), K = Views.Of<float>(tK, pk), V = Views.Of<float>(tV, pv), O = Views.Of<float>(tO, po),
                    Lse = Views.Lse(tL, pl),
                    Scale = 1f / MathF.Sqrt(d),
                    Threads = 2,
                };
                switch (width)
                {
                    case 512: SplitKvDecode<float, CausalMask, IdentityScoreMod, Isa512, Vector512<float>>.Run(call, default, default); break;
                    case 256: SplitKvDecode<float, CausalMask, IdentityScoreMod, Isa256, Vector256<float>>.Run(call, default, default); break;
                    default: SplitKvDecode<float, CausalMask, IdentityScoreMod, Isa128, Vector128<float>>.Run(call, default, default); break;
                }
            }
            ReferenceForwardResult r = ReferenceAttention.Forward<float>(tQ, tK, tV, options);
            double err = TestData.RelativeError<float>(o, r.Output), lseErr = TestData.LseError(lse, r.Lse);
            string what = $"seed {TestData.RunSeed} Vector{width} tq{tq} tk{tk} h{h}/{hkv} d{d}: err {err:E2} lse {lseErr:E2}";
            output.WriteLine(what);
            Assert.True(err <= 1e-5 && lseErr <= 1e-5, what);
        }
    }
}
