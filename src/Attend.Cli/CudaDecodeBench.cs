using Attend.Cuda;

namespace Attend.Cli;

/// <summary>
/// The decode rows of <c>attend bench --backend cuda</c> (protocol: batch 8, 32 query heads over 8 KV heads, head dim
/// 128, caches 4k/32k/128k): pages in a shuffled order, random bf16 data (a 16M-element random block repeated over the
/// cache, so the reference can be recomputed), timed with CUDA events; bandwidth = bytes of K and V read per second.
/// </summary>
internal static class CudaDecodeBench
{
    private const int Chunk = 1 << 24;

    public static CudaBench.GpuResult Run(CudaContext ctx, int batch, int heads, int kvHeads, int dim, int tokens, int pageSize, bool quick)
    {
        string name = "decode";
        try
        {
            int pagesPer = (tokens + pageSize - 1) / pageSize, pageCount = batch * pagesPer;
            var rng = new Random(tokens);
            int[] order = Enumerable.Range(0, pageCount).OrderBy(_ => rng.Next()).ToArray();
            var indptr = new int[batch + 1];
            var last = new int[batch];
            for (int b = 0; b < batch; b++)
            {
                indptr[b + 1] = (b + 1) * pagesPer;
                last[b] = tokens - (pagesPer - 1) * pageSize;
            }
            var table = new PageTable(indptr, order, last, pageSize, pageCount);
            BFloat16[] kChunk = Bf16(GaussianData.Create(Chunk, 201)), vChunk = Bf16(GaussianData.Create(Chunk, 202));
            BFloat16[] q = Bf16(GaussianData.Create((long)batch * heads * dim, 203));
            using var cache = new CudaPagedKvCache(ctx, ElementType.BFloat16, pageCount, pageSize, kvHeads, dim);
            long elems = (long)pageCount * pageSize * kvHeads * dim;
            for (long at = 0; at < elems; at += Chunk)
            {
                int n = (int)Math.Min(Chunk, elems - at);
                cache.Keys.CopyFrom<BFloat16>(kChunk.AsSpan(0, n), at * 2);
                cache.Values.CopyFrom<BFloat16>(vChunk.AsSpan(0, n), at * 2);
            }
            using CudaTensor dq = CudaTensor.FromHost<BFloat16>(ctx, q, batch, 1, heads, dim);
            using CudaTensor o = CudaTensor.Create(ctx, ElementType.BFloat16, batch, 1, heads, dim);
            using CudaDecodePlan plan = CudaDecode.Plan(table, heads, cache, null, ctx);
            using var stream = new CudaStream(ctx);
            o.Buffer.Fill(0xFF);
            plan.Run(dq, o, null, stream);
            stream.Synchronize();
            var result = new BFloat16[q.Length];
            o.CopyTo<BFloat16>(result);
            double err = Error(q, kChunk, vChunk, result, table, heads, kvHeads, dim, rows: 6);
            if (!(err <= CudaBench.Tolerance))
                return Failed(name, batch, heads, kvHeads, dim, tokens, err, $"sampled relative error {err:E2} exceeds {CudaBench.Tolerance:G2} (NaN: unwritten outputs)");
            for (int i = 0; i < 3; i++) plan.Run(dq, o, null, stream);
            using var start = new CudaEvent(ctx);
            using var end = new CudaEvent(ctx);
            var times = new List<double>();
            double total = 0;
            while (times.Count < 10 || (total < (quick ? 50 : 500) && times.Count < 300))
            {
                start.Record(stream);
                plan.Run(dq, o, null, stream);
                end.Record(stream);
                double ms = CudaEvent.ElapsedMilliseconds(start, end);
                times.Add(ms);
                total += ms;
            }
            times.Sort();
            double median = times[times.Count / 2];
            double bytes = 2.0 * plan.CachedTokens * kvHeads * dim * 2;
            return new CudaBench.GpuResult(name, "decode", tokens, heads, kvHeads, dim, median, times[^1] - times[0], times.Count, 0, err, true, null)
            {
                Kind = "decode", Batch = batch, Gbps = bytes / (median / 1e3) / 1e9,
            };
        }
        catch (Exception e) when (e is CudaException or NotSupportedException or ArgumentException)
        {
            return Failed(name, batch, heads, kvHeads, dim, tokens, double.NaN, $"{e.GetType().Name}: {e.Message}");
        }
    }

    private static CudaBench.GpuResult Failed(string name, int batch, int heads, int kvHeads, int dim, int tokens, double err, string why) =>
        new(name, "decode", tokens, heads, kvHeads, dim, 0, 0, 0, 0, err, false, why) { Kind = "decode", Batch = batch };

    private static BFloat16[] Bf16(float[] data) => Array.ConvertAll(data, x => (BFloat16)x);

    // ‖o − ref‖ / ‖ref‖ over sampled (sequence, head) rows; the cache value at element e is chunk[e mod Chunk].
    private static double Error(BFloat16[] q, BFloat16[] kChunk, BFloat16[] vChunk, BFloat16[] o, PageTable table, int heads, int kvHeads, int dim, int rows)
    {
        var rng = new Random(7);
        int group = heads / kvHeads;
        double diff = 0, norm = 0;
        for (int r = 0; r < rows; r++)
        {
            int b = rng.Next(table.Sequences), h = rng.Next(heads), hk = h / group, len = table.Length(b);
            var scores = new double[len];
            double max = double.NegativeInfinity;
            for (int t = 0; t < len; t++)
            {
                long at = Address(table, b, t, hk, kvHeads, dim);
                double s = 0;
                for (int d = 0; d < dim; d++) s += (double)(float)q[((long)b * heads + h) * dim + d] * (float)kChunk[(at + d) % Chunk];
                scores[t] = s / Math.Sqrt(dim);
                max = Math.Max(max, scores[t]);
            }
            var exact = new double[dim];
            double sum = 0;
            for (int t = 0; t < len; t++)
            {
                long at = Address(table, b, t, hk, kvHeads, dim);
                double p = Math.Exp(scores[t] - max);
                sum += p;
                for (int d = 0; d < dim; d++) exact[d] += p * (float)vChunk[(at + d) % Chunk];
            }
            for (int d = 0; d < dim; d++)
            {
                double e = exact[d] / sum, a = (float)o[((long)b * heads + h) * dim + d];
                diff += (a - e) * (a - e);
                norm += e * e;
            }
        }
        return Math.Sqrt(diff / norm);
    }

    private static long Address(PageTable table, int b, int t, int hk, int kvHeads, int dim)
    {
        (int page, int slot) = table.Locate(b, t);
        return (((long)page * table.PageSize + slot) * kvHeads + hk) * dim;
    }
}
