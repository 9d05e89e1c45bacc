using Attend;
using BenchmarkDotNet.Attributes;

namespace Attend.Benchmarks;

/// <summary>Whole calls per registered CPU variant at a mid-size shape (B=1, H=8/2, D=128, T=1024, causal).</summary>
[MemoryDiagnoser]
public class AttentionBenchmarks
{
    private const int T = 1024, H = 8, Hkv = 2, D = 128;
    private float[] _q = [], _k = [], _v = [], _o = [], _lse = [];

    [Params("CpuFlashVector512", "CpuFlashVector256")]
    public string Variant { get; set; } = "";

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        float[] R(int n) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1); return a; }
        _q = R(T * H * D);
        _k = R(T * Hkv * D);
        _v = R(T * Hkv * D);
        _o = new float[_q.Length];
        _lse = new float[H * T];
    }

    [Benchmark]
    public void CausalForward() =>
        Attention.Forward<float>(AttentionLayout.Bthd<float>(_q, 1, T, H, D), AttentionLayout.Bthd<float>(_k, 1, T, Hkv, D),
            AttentionLayout.Bthd<float>(_v, 1, T, Hkv, D), new AttentionOptions { Mask = new CausalMask(), Variant = Variant },
            AttentionLayout.Bthd<float>(_o, 1, T, H, D), AttentionLayout.Lse(_lse, 1, H, T));
}
