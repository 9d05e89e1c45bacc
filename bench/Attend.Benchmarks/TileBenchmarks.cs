using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Attend;
using Attend.Kernels.Cpu;
using BenchmarkDotNet.Attributes;

namespace Attend.Benchmarks;

/// <summary>
/// One 64×64 tile of the forward at head dim 128, piece by piece: the score product Q·Kᵀ, the online softmax, and the
/// P·V accumulation. Each product is 2·64·64·128 FLOP (1.05 MFLOP).
/// </summary>
[MemoryDiagnoser]
public unsafe class TileBenchmarks
{
    private const int Rows = 64, Keys = 64, Dim = 128;
    private float* _q, _kt, _s, _v, _o, _m, _l, _alpha, _rowMax;

    [GlobalSetup]
    public void Setup()
    {
        _q = Filled(Rows * Dim);
        _kt = Filled(Dim * Keys);
        _s = Filled(Rows * Keys);
        _v = Filled(Keys * Dim);
        _o = Filled(Rows * Dim);
        _m = Filled(Rows);
        _l = Filled(Rows);
        _alpha = Filled(Rows);
        _rowMax = Filled(Rows);
    }

    private static float* Filled(int count)
    {
        float* p = (float*)NativeMemory.AlignedAlloc((nuint)(count * sizeof(float)), 64);
        for (int i = 0; i < count; i++) p[i] = MathF.Sin(i) * 0.1f;
        return p;
    }

    [Benchmark]
    public void ScoreProduct() =>
        TileGemm.MultiplyTransposed<Isa512, Vector512<float>>(_q, Dim, _kt, Keys, _s, Keys, Rows, Keys, Dim);

    [Benchmark]
    public void ScoreTileWithCausalMask() =>
        ScoreTile.Compute<Isa512, Vector512<float>, CausalMask, IdentityScoreMod>(_q, _kt, _s, null, _rowMax, Rows, Rows, Keys, Dim, 1f,
            partial: true, default(CausalMask), default(IdentityScoreMod), 0, 0, 0, 0);

    [Benchmark]
    public void OnlineSoftmaxUpdate()
    {
        new Span<float>(_m, Rows).Fill(float.NegativeInfinity);
        new Span<float>(_l, Rows).Clear();
        OnlineSoftmax.Update<Isa512, Vector512<float>>(_s, Rows, Keys, _rowMax, _m, _l, _alpha);
    }

    [Benchmark]
    public void ValueProduct() =>
        TileGemm.MultiplyAccumulate<Isa512, Vector512<float>>(_s, Keys, _v, Dim, _o, Dim, _alpha, Rows, Dim, Keys);

    [Benchmark]
    public void Exp4096()
    {
        for (int i = 0; i < Rows * Keys; i += 16)
            Isa512.Exp(Vector512.Load(_s + i) - Vector512.Create(1f)).Store(_s + i);
    }
}
