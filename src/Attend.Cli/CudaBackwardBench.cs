using System.Diagnostics;
using Attend.Cuda;

namespace Attend.Cli;

/// <summary>
/// The backward rows of <c>attend bench --backend cuda</c> (protocol shape, causal): our forward for O and LSE, then the
/// backward timed as a whole call (it synchronises; the plan upload and the zero fills are inside the time, under 1 %
/// at these sizes). Checked before timing: no NaN in dQ, dK, dV (poisoned first) and 8 sampled dQ rows against float64.
/// FLOPs = 2.5 × the forward's (BENCH-PROTOCOL).
/// </summary>
internal static class CudaBackwardBench
{
    public static CudaBench.GpuResult Run(CudaContext ctx, int tokens, int heads, int kvHeads, int dim, BFloat16[] hq, BFloat16[] hk, BFloat16[] hv, bool quick,
        bool deterministic = false)
    {
        string name = deterministic ? "backward causal det" : "backward causal";
        int t = tokens;
        try
        {
            var mask = new CausalMask();
            using CudaTensor q = CudaTensor.FromHost<BFloat16>(ctx, hq.AsSpan(0, t * heads * dim), 1, t, heads, dim);
            using CudaTensor k = CudaTensor.FromHost<BFloat16>(ctx, hk.AsSpan(0, t * kvHeads * dim), 1, t, kvHeads, dim);
            using CudaTensor v = CudaTensor.FromHost<BFloat16>(ctx, hv.AsSpan(0, t * kvHeads * dim), 1, t, kvHeads, dim);
            BFloat16[] hdo = Array.ConvertAll(GaussianData.Create((long)t * heads * dim, 404), x => (BFloat16)x);
            using CudaTensor dO = CudaTensor.FromHost<BFloat16>(ctx, hdo, 1, t, heads, dim);
            using CudaTensor o = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, heads, dim);
            using var lse = new DeviceBuffer(ctx, (long)heads * t * sizeof(float));
            var options = new AttentionOptions { Mask = mask };
            using (CudaAttentionPlan forward = CudaAttention.Plan(q, k, v, options, ctx))
                forward.Run(q, k, v, o, lse);
            ctx.Synchronize();
            using CudaTensor dq = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, heads, dim);
            using CudaTensor dk = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, kvHeads, dim);
            using CudaTensor dv = CudaTensor.Create(ctx, ElementType.BFloat16, 1, t, kvHeads, dim);
            BlockMask blocks = BlockMask.Create(mask, t, t, 1, heads, FlashBlockPlan.QueryBlock, FlashBlockPlan.KeyBlock);
            FlashBlockPlan plan = FlashBlockPlan.Build(blocks, mask);
            var geometry = new CudaGeometry(1, t, t, heads, kvHeads, dim, [0, 0, t, 0, t]);
            float scale = 1f / MathF.Sqrt(dim);
            void Backward() => CudaFlashBackward.Run(ctx, geometry, ElementType.BFloat16, plan, default, scale, deterministic, q, k, v, o, dO, lse, dq, dk, dv);
            dq.Buffer.Fill(0xFF);
            Backward();
            var gq = new BFloat16[dq.Length];
            dq.CopyTo<BFloat16>(gq);
            long nan = 0;
            foreach (BFloat16 x in gq) if (float.IsNaN(x)) nan++;
            foreach (CudaTensor g in (CudaTensor[])[dk, dv])
            {
                var h = new BFloat16[g.Length];
                g.CopyTo<BFloat16>(h);
                foreach (BFloat16 x in h) if (float.IsNaN(x)) nan++;
            }
            double err = SampledDq(hq, hk, hv, hdo, gq, t, heads, kvHeads, dim, scale, rows: 8);
            if (nan > 0 || !(err <= 2e-2))
                return new CudaBench.GpuResult(name, "causal", t, heads, kvHeads, dim, 0, 0, 0, 0, err, false,
                    nan > 0 ? $"{nan} NaN gradients" : $"sampled dQ relative error {err:E2} exceeds 2e-2") { Kind = "backward" };
            Backward(); // warm-up
            var times = new List<double>();
            double total = 0;
            while (times.Count < 3 || (total < (quick ? 50 : 3000) && times.Count < 20))
            {
                var watch = Stopwatch.StartNew();
                Backward();
                double ms = watch.Elapsed.TotalMilliseconds;
                times.Add(ms);
                total += ms;
            }
            times.Sort();
            double median = times[times.Count / 2];
            double flops = 2.5 * 4.0 * heads * dim * ((double)t * (t + 1) / 2);
            return new CudaBench.GpuResult(name, "causal", t, heads, kvHeads, dim, median, times[^1] - times[0], times.Count, flops / (median / 1e3) / 1e12, err, true, null)
            {
                Kind = "backward",
            };
        }
        catch (Exception e) when (e is CudaException or NotSupportedException or ArgumentException)
        {
            return new CudaBench.GpuResult(name, "causal", t, heads, kvHeads, dim, 0, 0, 0, 0, double.NaN, false, $"{e.GetType().Name}: {e.Message}") { Kind = "backward" };
        }
    }

    // dQ_i = scale · Σ_j P_ij (dP_ij − Δ_i) K_j with Δ_i = Σ_j P_ij dP_ij, causal, in float64 from the bf16 inputs.
    private static double SampledDq(BFloat16[] q, BFloat16[] k, BFloat16[] v, BFloat16[] dO, BFloat16[] dq, int t, int heads, int kvHeads, int dim, float scale, int rows)
    {
        var rng = new Random(t + 9);
        int group = heads / kvHeads;
        double diff = 0, norm = 0;
        var p = new double[t];
        var dp = new double[t];
        for (int r = 0; r < rows; r++)
        {
            int i = r == 0 ? t - 1 : rng.Next(t), h = rng.Next(heads), hk = h / group;
            long qa = ((long)i * heads + h) * dim;
            double max = double.NegativeInfinity;
            for (int j = 0; j <= i; j++)
            {
                long ka = ((long)j * kvHeads + hk) * dim;
                double s = 0, g = 0;
                for (int d = 0; d < dim; d++)
                {
                    s += (double)(float)q[qa + d] * (float)k[ka + d];
                    g += (double)(float)dO[qa + d] * (float)v[ka + d];
                }
                p[j] = s * scale;
                dp[j] = g;
                max = Math.Max(max, p[j]);
            }
            double sum = 0, delta = 0;
            for (int j = 0; j <= i; j++) { p[j] = Math.Exp(p[j] - max); sum += p[j]; }
            for (int j = 0; j <= i; j++) { p[j] /= sum; delta += p[j] * dp[j]; }
            for (int d = 0; d < dim; d++)
            {
                double e = 0;
                for (int j = 0; j <= i; j++) e += p[j] * (dp[j] - delta) * (float)k[((long)j * kvHeads + hk) * dim + d];
                e *= scale;
                double a = (float)dq[qa + d];
                diff += (a - e) * (a - e);
                norm += e * e;
            }
        }
        return Math.Sqrt(diff / norm);
    }
}
