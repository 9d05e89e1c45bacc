using System.Globalization;
using System.Numerics.Tensors;
using Attend.Methods.Sparse;
using Attend.Methods.Sparse.Dynamic;
using Attend.Methods.Sparse.Routing;
using Attend.Methods.Sparse.Static;

namespace Attend.Cli;

/// <summary>
/// The sparse part of <c>attend check --backend cuda</c>: plans of the sparse methods run on the GPU into poisoned
/// outputs and LSEs and compared with the float64 computation of the same sparse definition. Block plans (static
/// patterns, routing selectors) go through the float32 CUDA variant with their 64 × 64 block masks, exactly as the
/// methods call it; token-level plans (random vertical + slash + block columns, and MInference's own plan) go through
/// <c>column_sparse_forward.cu</c>, in float32 (rounded to bf16 on the way in) and in bf16. Fresh random inputs per seed.
/// </summary>
internal static class CudaSparseCheck
{
    private const double OutputTolerance = 1e-2;

    public static (int Passed, int Failed) Run(int seed, TextWriter output, TextWriter error)
    {
        var rng = new Random(unchecked(seed * 29 + 11));
        int passed = 0, failed = 0;
        void Report(string name, string shape, (double Err, double LseErr, string? Problem) r, double lseTolerance)
        {
            bool ok = r.Problem is null && r.Err <= OutputTolerance && r.LseErr <= lseTolerance;
            string line = string.Create(CultureInfo.InvariantCulture,
                $"  {(ok ? "ok  " : "FAIL")} {"cuda sparse",-18} {name,-40} {shape}  rel={r.Err:E2} (tol {OutputTolerance:G2})  lse={r.LseErr:E1}{(r.Problem is null ? "" : "  " + r.Problem)}");
            (ok ? output : error).WriteLine(line);
            if (ok) passed++;
            else failed++;
        }
        int Odd(int lo, int hi) => rng.Next(lo, hi) | 1;

        // Static patterns: the method's mask, frozen at the CPU tile (64 x 64) as StaticPatternMethod does.
        {
            int b = 2, t = Odd(300, 600), h = 8, hkv = 2, d = 128;
            var mask = MaskSpec.Intersect(new SinkWindowMask(rng.Next(1, 9), rng.Next(20, 130)), new CausalMask());
            Report($"streaming-llm {mask}", Shape(b, t, t, h, hkv, d), BlockPlan(rng, b, t, h, hkv, d, mask, BlockMask.Create(mask, t, t, b, h), null), RoundedLse);
        }
        {
            var offsets = SeqOffsets.FromLengths([rng.Next(1, 70), rng.Next(200, 500), rng.Next(60, 200)]);
            int h = 4, hkv = 4, d = 64;
            var pattern = new PowerAttentionMethod().CreateMask(MethodArgumentsOf("block=32", "local=2", "sinks=1"), offsets.MaxLength, h, causal: true);
            Report($"power-attention varlen", $"lengths={string.Join("/", Lengths(offsets))} H={h}/{hkv} D={d}",
                BlockPlan(rng, 1, offsets.TotalTokens, h, hkv, d, pattern, BlockMask.Create(pattern, offsets, offsets, h), offsets), RoundedLse);
        }
        // Routing selectors: BiFormer (region top-k, per head) and Routing Transformer (k-means clusters, token level).
        {
            int b = 1, t = Odd(600, 900), h = 8, hkv = 2, d = 128;
            float[] q = Gaussian(rng, (long)b * t * h * d), k = Gaussian(rng, (long)b * t * hkv * d), v = Gaussian(rng, (long)b * t * hkv * d);
            SparsePlan plan = BiFormer.Plan(new SelectorInput(q, k, b, t, t, h, hkv, d), new BiFormerOptions { TopK = 3, PerHead = true });
            Report("biformer top-3 regions per head", Shape(b, t, t, h, hkv, d), BlockPlan(q, k, v, b, t, h, hkv, d, plan.Options()), RoundedLse);
            SparsePlan routing = RoutingTransformer.Plan(new SelectorInput(q, k, b, t, t, h, hkv, d), new RoutingTransformerOptions { Clusters = 4, Window = 64 });
            Report("routing-transformer 4 clusters", Shape(b, t, t, h, hkv, d), BlockPlan(q, k, v, b, t, h, hkv, d, routing.Options()), RoundedLse);
            SparsePlan many = RoutingTransformer.Plan(new SelectorInput(q, k, b, t, t, h, hkv, d), new RoutingTransformerOptions { Clusters = 29, Window = 48 });
            Report("routing-transformer sorted, 29 clusters", Shape(b, t, t, h, hkv, d), ClusterSorted(q, k, v, b, t, h, hkv, d, many), RoundedLse);
        }
        // Token-level plans on the column-sparse kernel.
        {
            int b = 2, t = Odd(500, 900), h = 8, hkv = 2, d = 128;
            VerticalSlashPlan plan = RandomPlan(rng, b, h, t, t, null);
            Report("vertical-slash random (f32 via bf16)", Shape(b, t, t, h, hkv, d), TokenPlan<float>(rng, b, t, t, h, hkv, d, plan, null), RoundedLse);
            Report("vertical-slash random (bf16)", Shape(b, t, t, h, hkv, d), TokenPlan<BFloat16>(rng, b, t, t, h, hkv, d, plan, null), CheckCommand.LseTolerance);
        }
        {
            int b = 1, tq = Odd(100, 300), tk = Odd(400, 800), h = 4, hkv = 1, d = 64;
            Report("vertical-slash Tq < Tk, D=64, MQA", Shape(b, tq, tk, h, hkv, d), TokenPlan<float>(rng, b, tq, tk, h, hkv, d, RandomPlan(rng, b, h, tq, tk, null), null), RoundedLse);
        }
        {
            int b = 1, tq = Odd(300, 400), tk = Odd(100, 250), h = 2, hkv = 1, d = 256;
            Report("vertical-slash Tq > Tk (empty rows), D=256", Shape(b, tq, tk, h, hkv, d), TokenPlan<BFloat16>(rng, b, tq, tk, h, hkv, d, RandomPlan(rng, b, h, tq, tk, null), null), CheckCommand.LseTolerance);
        }
        {
            var offsets = SeqOffsets.FromLengths([1, rng.Next(2, 130), rng.Next(300, 600)]);
            int h = 4, hkv = 2, d = 128;
            Report("vertical-slash varlen (a 1-token sequence)", $"lengths={string.Join("/", Lengths(offsets))} H={h}/{hkv} D={d}",
                TokenPlan<float>(rng, 1, offsets.TotalTokens, offsets.TotalTokens, h, hkv, d, RandomPlan(rng, 1, h, 0, 0, offsets), offsets), RoundedLse);
        }
        {
            int b = 1, t = Odd(1500, 2500), h = 4, hkv = 1, d = 128;
            float[] q = Gaussian(rng, (long)b * t * h * d), k = Gaussian(rng, (long)b * t * hkv * d), v = Gaussian(rng, (long)b * t * hkv * d);
            var patterns = Enumerable.Repeat(new MInferenceHeadPattern(MInferencePattern.VerticalSlash, Vertical: 60, Slash: 200), h).ToArray();
            HybridSparsePlan plan = MInference.BuildPlan(Bthd(q, b, t, h, d), Bthd(k, b, t, hkv, d), Bthd(v, b, t, hkv, d), new MInferenceOptions { Heads = patterns });
            Report("minference vertical-slash plan", Shape(b, t, t, h, hkv, d), TokenPlan(q, k, v, b, t, t, h, hkv, d, plan.Tokens, null), RoundedLse);
            // The same plan under the authors' covering ranges (SlashCoverage.Blocks: column bits of the touched blocks).
            plan.Tokens.Coverage = SlashCoverage.Blocks;
            Report("minference vertical-slash plan, coverage=blocks", Shape(b, t, t, h, hkv, d), TokenPlan(q, k, v, b, t, t, h, hkv, d, plan.Tokens, null), RoundedLse);
        }
        {
            int b = 1, tq = Odd(200, 400), tk = Odd(500, 900), h = 4, hkv = 2, d = 256; // the token kernel takes D 64, 128, 256
            VerticalSlashPlan plan = RandomPlan(rng, b, h, tq, tk, null);
            plan.Coverage = SlashCoverage.Blocks;
            Report("vertical-slash coverage=blocks, Tq < Tk", Shape(b, tq, tk, h, hkv, d), TokenPlan<float>(rng, b, tq, tk, h, hkv, d, plan, null), RoundedLse);
        }
        // Token-level block plans whose partial blocks are flattened through IMaskRowWords (retrieval tokens, axial grid).
        {
            int b = 1, t = Odd(700, 1000), h = 4, hkv = 2, d = 64;
            float[] q = Gaussian(rng, (long)b * t * h * d), k = Gaussian(rng, (long)b * t * hkv * d), v = Gaussian(rng, (long)b * t * hkv * d);
            SparsePlan retrieval = RetrievalAttention.Plan(new SelectorInput(q, k, b, t, t, h, hkv, d));
            Report("retrieval-attention tokens", Shape(b, t, t, h, hkv, d), BlockPlan(q, k, v, b, t, h, hkv, d, retrieval.Options()), RoundedLse);
            IMaskMod axial = Masks.And(Masks.Causal, new Attend.Methods.Sparse.Static.AxialMask(new Attend.Methods.Sparse.Static.TokenGrid(25, 36)));
            Report("axial 25x36 grid", Shape(b, 900, 900, h, hkv, d), BlockPlan(rng, b, 900, h, hkv, d, axial, BlockMask.Create(axial, 900, 900, b, h), null), RoundedLse);
        }
        return (passed, failed);
    }

    private const double RoundedLse = CheckCommand.RoundedInputLseTolerance;

    private static string Shape(int b, int tq, int tk, int h, int hkv, int d) => $"B={b} Tq={tq} Tk={tk} H={h}/{hkv} D={d}";

    private static int[] Lengths(SeqOffsets o) => Enumerable.Range(0, o.Count).Select(o.Length).ToArray();

    private static Attend.Methods.MethodArguments MethodArgumentsOf(params string[] pairs) => Attend.Methods.MethodArguments.Parse(pairs);

    private static (double, double, string?) BlockPlan(Random rng, int b, int t, int h, int hkv, int d, IMaskMod mask, BlockMask blocks, SeqOffsets? offsets)
    {
        float[] q = Gaussian(rng, (long)b * t * h * d), k = Gaussian(rng, (long)b * t * hkv * d), v = Gaussian(rng, (long)b * t * hkv * d);
        return BlockPlan(q, k, v, b, t, h, hkv, d, new AttentionOptions { Mask = mask, BlockMask = blocks, QueryOffsets = offsets, KeyOffsets = offsets });
    }

    // A block plan (mask + 64 x 64 block mask) through Attention.Forward on the cuda backend, against the float64 reference.
    private static (double, double, string?) BlockPlan(float[] q, float[] k, float[] v, int b, int t, int h, int hkv, int d, AttentionOptions options)
    {
        float[] o = Poisoned(q.Length), lse = Poisoned((long)b * h * t);
        try
        {
            AttentionKernel ran = Attention.Forward<float>(Bthd(q, b, t, h, d), Bthd(k, b, t, hkv, d), Bthd(v, b, t, hkv, d), options with { Backend = "cuda" },
                Bthd(o, b, t, h, d), AttentionLayout.Lse(lse, b, h, t));
            if (ran.Backend != "cuda") return (double.PositiveInfinity, 0, $"ran on {ran.Name}");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return (double.PositiveInfinity, double.PositiveInfinity, $"{e.GetType().Name}: {AttendApp.OneLine(e)}");
        }
        ReferenceForwardResult exact = ReferenceAttention.Forward<float>(Bthd(q, b, t, h, d), Bthd(k, b, t, hkv, d), Bthd(v, b, t, hkv, d), options);
        return Compare(o, lse, exact);
    }

    // The Routing Transformer's sorted form (one packed call per cluster segment plus the window, LSE-merged) with the
    // exact kernel on the cuda backend, against the float64 reference of the plan's mask (the same pairs).
    private static (double, double, string?) ClusterSorted(float[] q, float[] k, float[] v, int b, int t, int h, int hkv, int d, SparsePlan plan)
    {
        float[] o = Poisoned(q.Length), lse = Poisoned((long)b * h * t);
        try
        {
            using (AttentionBackend.Use("cuda"))
            {
                AttentionKernel? ran = ClusterSortedAttention.Forward(q, k, v, plan, d, null, o, lse);
                if (ran is null || ran.Backend != "cuda") return (double.PositiveInfinity, 0, $"ran on {ran?.Name ?? "no kernel"}");
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return (double.PositiveInfinity, double.PositiveInfinity, $"{e.GetType().Name}: {AttendApp.OneLine(e)}");
        }
        ReferenceForwardResult exact = ReferenceAttention.Forward<float>(Bthd(q, b, t, h, d), Bthd(k, b, t, hkv, d), Bthd(v, b, t, hkv, d), plan.Options());
        return Compare(o, lse, exact);
    }

    private static (double, double, string?) TokenPlan<T>(Random rng, int b, int tq, int tk, int h, int hkv, int d, VerticalSlashPlan plan, SeqOffsets? offsets)
        where T : unmanaged
    {
        T[] q = Convert<T>(Gaussian(rng, (long)b * tq * h * d)), k = Convert<T>(Gaussian(rng, (long)b * tk * hkv * d)), v = Convert<T>(Gaussian(rng, (long)b * tk * hkv * d));
        return TokenPlan(q, k, v, b, tq, tk, h, hkv, d, plan, offsets);
    }

    // A vertical-slash plan on the column-sparse CUDA kernel, against VerticalSlashAttention.Reference (float64).
    private static (double, double, string?) TokenPlan<T>(T[] q, T[] k, T[] v, int b, int tq, int tk, int h, int hkv, int d, VerticalSlashPlan plan, SeqOffsets? offsets)
        where T : unmanaged
    {
        T[] o = new T[q.Length];
        Array.Fill(o, ElementConvert.FromSingle<T>(float.NaN));
        float[] lse = Poisoned((long)b * h * tq);
        var options = new AttentionOptions { QueryOffsets = offsets, KeyOffsets = offsets };
        try
        {
            VerticalSlashAttention.Forward<T>(Bthd(q, b, tq, h, d), Bthd(k, b, tk, hkv, d), Bthd(v, b, tk, hkv, d), plan, options with { Backend = "cuda" },
                Bthd(o, b, tq, h, d), AttentionLayout.Lse(lse, b, h, tq));
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return (double.PositiveInfinity, double.PositiveInfinity, $"{e.GetType().Name}: {AttendApp.OneLine(e)}");
        }
        ReferenceForwardResult exact = VerticalSlashAttention.Reference<T>(Bthd(q, b, tq, h, d), Bthd(k, b, tk, hkv, d), Bthd(v, b, tk, hkv, d), plan, options);
        return Compare(o, lse, exact);
    }

    // Verticals, a dense local band plus scattered diagonals, and block columns on some query blocks.
    private static VerticalSlashPlan RandomPlan(Random rng, int batch, int heads, int tq, int tk, SeqOffsets? offsets)
    {
        VerticalSlashPlan plan = offsets is null ? new VerticalSlashPlan(batch, heads, tq, tk) : new VerticalSlashPlan(offsets, offsets, heads);
        for (int s = 0; s < plan.Sequences; s++)
        {
            int keys = plan.KeyLength(s);
            if (keys == 0) continue;
            for (int h = 0; h < heads; h++)
            {
                var vertical = Enumerable.Range(0, rng.Next(0, 40)).Select(_ => rng.Next(keys)).ToArray();
                int band = rng.Next(1, 150);
                var slash = Enumerable.Range(0, Math.Min(band, keys)).Concat(Enumerable.Range(0, rng.Next(0, 30)).Select(_ => rng.Next(keys))).ToArray();
                plan.SetVertical(s, h, vertical);
                plan.SetSlash(s, h, slash);
                for (int qb = 0; qb < plan.QueryBlocks(s); qb++)
                    if (rng.Next(3) == 0) plan.SetBlockColumns(s, h, qb, Enumerable.Range(0, rng.Next(1, 80)).Select(_ => rng.Next(keys)).ToArray());
            }
        }
        return plan;
    }

    private static (double Err, double LseErr, string? Problem) Compare<T>(T[] o, float[] lse, ReferenceForwardResult exact) where T : unmanaged
    {
        double err = CheckCommand.RelativeL2<T>(o, exact.Output, out int nan);
        if (nan > 0) return (err, 0, $"{nan} NaN/unwritten outputs");
        double worst = 0;
        for (int i = 0; i < exact.Lse.Length; i++)
        {
            if (double.IsNegativeInfinity(exact.Lse[i]))
            {
                if (!float.IsNegativeInfinity(lse[i])) return (err, worst, $"LSE[{i}] = {lse[i]} on a row that sees nothing (expected -inf)");
                continue;
            }
            if (!float.IsFinite(lse[i])) return (err, worst, $"LSE[{i}] = {lse[i]} (expected {exact.Lse[i]:G6})");
            worst = Math.Max(worst, Math.Abs(lse[i] - exact.Lse[i]) / Math.Max(1, Math.Abs(exact.Lse[i])));
        }
        return (err, worst, null);
    }

    private static TensorSpan<T> Bthd<T>(T[] a, int b, int t, int h, int d) => AttentionLayout.Bthd<T>(a, b, t, h, d);

    private static float[] Poisoned(long n)
    {
        var a = new float[n];
        Array.Fill(a, float.NaN);
        return a;
    }

    private static T[] Convert<T>(float[] a) where T : unmanaged
    {
        var r = new T[a.Length];
        for (int i = 0; i < a.Length; i++) r[i] = ElementConvert.FromSingle<T>(a[i]);
        return r;
    }

    private static float[] Gaussian(Random rng, long count)
    {
        var data = new float[count];
        for (long i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            data[i] = (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return data;
    }
}
