using System.Globalization;
using Attend.Cuda;

namespace Attend.Cli;

/// <summary>
/// The decode part of <c>attend check --backend cuda</c>: random paged caches (shuffled pages, odd page sizes, empty and
/// one-token sequences, grouped-query ratios 1 to 8, head dims 64 and 128) decoded on the GPU into poisoned outputs and
/// compared with a float64 reference over the gathered keys and values.
/// </summary>
internal static class CudaDecodeCheck
{
    private sealed record DecodeCase(int B, int H, int Hkv, int D, int PageSize, int[] Lengths);

    public static (int Passed, int Failed) Run(int seed, TextWriter output, TextWriter error)
    {
        var rng = new Random(unchecked(seed * 17 + 5));
        DecodeCase[] cases =
        [
            new(3, 8, 2, 128, 16, [rng.Next(1, 3000), 1, 0]),
            new(2, 32, 8, 128, 7, [rng.Next(1000, 5000), rng.Next(1, 200)]),
            new(2, 8, 1, 64, 16, [rng.Next(1, 2500), rng.Next(1, 2500)]),
            new(1, 4, 4, 64, 1, [rng.Next(1, 300)]),
        ];
        int passed = 0, failed = 0;
        foreach (DecodeCase c in cases)
            foreach (ElementType type in (ElementType[])[ElementType.BFloat16, ElementType.Float16])
            {
                (double err, double lseErr, string? problem) = type == ElementType.BFloat16 ? One<BFloat16>(c, type, rng) : One<Half>(c, type, rng);
                bool ok = problem is null && err <= CheckCommand.Tolerance(type) && lseErr <= CheckCommand.LseTolerance;
                string line = string.Create(CultureInfo.InvariantCulture,
                    $"  {(ok ? "ok  " : "FAIL")} {"CudaPagedDecode",-18} {type.ShortName(),-4} {"paged decode, page " + c.PageSize,-34} B={c.B} lengths={string.Join("/", c.Lengths)} H={c.H}/{c.Hkv} D={c.D}  rel={err:E2}  lse={lseErr:E1}{(problem is null ? "" : "  " + problem)}");
                (ok ? output : error).WriteLine(line);
                if (ok) passed++;
                else failed++;
            }
        return (passed, failed);
    }

    private static (double, double, string?) One<T>(DecodeCase c, ElementType type, Random rng) where T : unmanaged
    {
        int pagesNeeded = 0;
        foreach (int len in c.Lengths) pagesNeeded += (len + c.PageSize - 1) / c.PageSize;
        int pageCount = pagesNeeded + 3; // a few pages nobody uses
        int[] order = Enumerable.Range(0, pageCount).OrderBy(_ => rng.Next()).ToArray();
        var indptr = new int[c.B + 1];
        var indices = new List<int>();
        var last = new int[c.B];
        for (int b = 0; b < c.B; b++)
        {
            int pages = (c.Lengths[b] + c.PageSize - 1) / c.PageSize;
            for (int p = 0; p < pages; p++) indices.Add(order[indices.Count]);
            indptr[b + 1] = indices.Count;
            last[b] = pages == 0 ? 0 : c.Lengths[b] - (pages - 1) * c.PageSize;
        }
        var table = new PageTable(indptr, indices.ToArray(), last, c.PageSize, pageCount);
        long pageElems = (long)pageCount * c.PageSize * c.Hkv * c.D;
        T[] k = Gaussian<T>(rng, pageElems), v = Gaussian<T>(rng, pageElems), q = Gaussian<T>(rng, (long)c.B * c.H * c.D);
        CudaContext ctx = CudaContext.Default;
        var o = new T[q.Length];
        var lse = new float[c.B * c.H];
        using (var cache = new CudaPagedKvCache(ctx, type, pageCount, c.PageSize, c.Hkv, c.D))
        using (CudaTensor dq = CudaTensor.FromHost<T>(ctx, q, c.B, 1, c.H, c.D))
        using (CudaTensor dout = CudaTensor.Create(ctx, type, c.B, 1, c.H, c.D))
        using (var dlse = new DeviceBuffer(ctx, lse.Length * sizeof(float)))
        {
            cache.Keys.CopyFrom<T>(k);
            cache.Values.CopyFrom<T>(v);
            dout.Buffer.Fill(0xFF);
            dlse.Fill(0xFF);
            CudaDecode.Run(dq, cache, table, null, dout, dlse);
            dout.CopyTo<T>(o);
            dlse.CopyTo<float>(lse);
        }
        // float64 reference over the gathered tokens.
        double scale = 1 / Math.Sqrt(c.D), diff = 0, norm = 0, lseErr = 0;
        string? problem = null;
        int group = c.H / c.Hkv;
        for (int b = 0; b < c.B; b++)
        {
            int len = table.Length(b);
            var scores = new double[len];
            for (int h = 0; h < c.H; h++)
            {
                int hk = h / group;
                double max = double.NegativeInfinity;
                for (int t = 0; t < len; t++)
                {
                    (int page, int slot) = table.Locate(b, t);
                    long at = (((long)page * c.PageSize + slot) * c.Hkv + hk) * c.D;
                    double s = 0;
                    for (int d = 0; d < c.D; d++) s += (double)ElementConvert.ToSingle(q[((long)b * c.H + h) * c.D + d]) * ElementConvert.ToSingle(k[at + d]);
                    scores[t] = s * scale;
                    max = Math.Max(max, scores[t]);
                }
                var exact = new double[c.D];
                double sum = 0;
                for (int t = 0; t < len; t++)
                {
                    (int page, int slot) = table.Locate(b, t);
                    long at = (((long)page * c.PageSize + slot) * c.Hkv + hk) * c.D;
                    double p = Math.Exp(scores[t] - max);
                    sum += p;
                    for (int d = 0; d < c.D; d++) exact[d] += p * ElementConvert.ToSingle(v[at + d]);
                }
                for (int d = 0; d < c.D; d++)
                {
                    double e = sum > 0 ? exact[d] / sum : 0, a = ElementConvert.ToSingle(o[((long)b * c.H + h) * c.D + d]);
                    if (double.IsNaN(a)) problem = "NaN/unwritten output";
                    diff += (a - e) * (a - e);
                    norm += e * e;
                }
                double refLse = len == 0 ? double.NegativeInfinity : max + Math.Log(sum);
                float got = lse[b * c.H + h];
                if (double.IsNegativeInfinity(refLse))
                {
                    if (!float.IsNegativeInfinity(got)) problem = $"LSE {got} for an empty sequence (expected -inf)";
                }
                else if (!float.IsFinite(got)) problem = $"LSE {got} (expected {refLse:G6})";
                else lseErr = Math.Max(lseErr, Math.Abs(got - refLse) / Math.Max(1, Math.Abs(refLse)));
            }
        }
        return (norm == 0 ? 0 : Math.Sqrt(diff / norm), lseErr, problem);
    }

    private static T[] Gaussian<T>(Random rng, long count) where T : unmanaged
    {
        var data = new T[count];
        for (long i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            data[i] = ElementConvert.FromSingle<T>((float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2)));
        }
        return data;
    }
}
