using System.Numerics.Tensors;
using Attend.Kernels.Cpu;

namespace Attend.Methods.Sparse.Routing;

/// <summary>
/// The small pieces the routing selectors share: block mean-pooling of queries and keys, top-k of a score row,
/// dot products, and running per-(sequence, head) work on all cores.
/// </summary>
internal static class SelectorMath
{
    /// <summary>Mean of each block of <paramref name="blockSize"/> query rows of one head: [blocks, D] (the last block may be short).</summary>
    public static float[] PoolQueries(SelectorInput x, int sequence, int head, int blockSize)
    {
        int t = x.QueryLength(sequence), d = x.Dim, blocks = (t + blockSize - 1) / blockSize;
        var pooled = new float[blocks * d];
        for (int b = 0; b < blocks; b++)
        {
            Span<float> dst = pooled.AsSpan(b * d, d);
            int r0 = b * blockSize, r1 = Math.Min(t, r0 + blockSize);
            for (int r = r0; r < r1; r++) TensorPrimitives.Add(dst, x.QueryRow(sequence, head, r), dst);
            TensorPrimitives.Multiply(dst, 1f / (r1 - r0), dst);
        }
        return pooled;
    }

    /// <summary>Mean of each block of <paramref name="blockSize"/> keys of one key head: [blocks, D].</summary>
    public static float[] PoolKeys(SelectorInput x, int sequence, int kvHead, int blockSize)
    {
        int t = x.KeyLength(sequence), d = x.Dim, blocks = (t + blockSize - 1) / blockSize;
        var pooled = new float[blocks * d];
        for (int b = 0; b < blocks; b++)
        {
            Span<float> dst = pooled.AsSpan(b * d, d);
            int k0 = b * blockSize, k1 = Math.Min(t, k0 + blockSize);
            for (int k = k0; k < k1; k++) TensorPrimitives.Add(dst, x.KeyRow(sequence, kvHead, k), dst);
            TensorPrimitives.Multiply(dst, 1f / (k1 - k0), dst);
        }
        return pooled;
    }

    /// <summary>Row <paramref name="index"/> of a [rows, D] array.</summary>
    public static ReadOnlySpan<float> Row(float[] rows, int index, int dim) => new(rows, index * dim, dim);

    /// <summary>
    /// Writes into <paramref name="chosen"/> the indices of the <paramref name="k"/> largest entries of
    /// <paramref name="scores"/> (−∞ entries are never chosen; ties go to the lower index) in ascending index order,
    /// and returns how many there are (fewer than k when fewer are finite).
    /// </summary>
    public static int TopK(ReadOnlySpan<float> scores, int k, Span<int> chosen)
    {
        if (k <= 0) return 0;
        // A min-heap of (score, index) of size ≤ k whose root is the weakest kept entry.
        Span<int> heap = chosen[..Math.Min(k, chosen.Length)];
        int size = 0;
        for (int i = 0; i < scores.Length; i++)
        {
            float s = scores[i];
            if (float.IsNegativeInfinity(s) || float.IsNaN(s)) continue;
            if (size < heap.Length)
            {
                heap[size] = i;
                SiftUp(scores, heap, size++);
            }
            else if (Better(scores, i, heap[0]))
            {
                heap[0] = i;
                SiftDown(scores, heap, 0, size);
            }
        }
        heap[..size].Sort();
        return size;
    }

    // a beats b: higher score, or equal score and lower index.
    private static bool Better(ReadOnlySpan<float> s, int a, int b) => s[a] > s[b] || (s[a] == s[b] && a < b);

    private static void SiftUp(ReadOnlySpan<float> s, Span<int> h, int i)
    {
        while (i > 0)
        {
            int p = (i - 1) / 2;
            if (!Better(s, h[p], h[i])) break;
            (h[p], h[i]) = (h[i], h[p]);
            i = p;
        }
    }

    private static void SiftDown(ReadOnlySpan<float> s, Span<int> h, int i, int n)
    {
        while (true)
        {
            int l = 2 * i + 1, r = l + 1, m = i;
            if (l < n && Better(s, h[m], h[l])) m = l;
            if (r < n && Better(s, h[m], h[r])) m = r;
            if (m == i) return;
            (h[m], h[i]) = (h[i], h[m]);
            i = m;
        }
    }

    /// <summary>Runs <paramref name="body"/> for 0..count−1 on all cores (dynamic claiming).</summary>
    public static void ForEach(int count, Action<int> body) => ParallelWork.Run(count, Environment.ProcessorCount, new Items(body));

    private sealed class Items(Action<int> body) : IWorkItems
    {
        public void Execute(int index) => body(index);
    }

    /// <summary>The score scale: the given one, else 1/√D.</summary>
    public static float Scale(float? scale, int dim) => scale ?? 1f / MathF.Sqrt(dim);

    /// <summary>
    /// Softmax of <paramref name="logits"/> in place, shifted by their maximum first: <c>TensorPrimitives.SoftMax</c>
    /// exponentiates the raw values, so a logit above ~88 overflows to ∞ and the row turns NaN.
    /// </summary>
    public static void SoftMaxInPlace(Span<float> logits)
    {
        if (logits.IsEmpty) return;
        float max = TensorPrimitives.Max(logits);
        if (float.IsNegativeInfinity(max))
        {
            logits.Clear(); // nothing visible: no weight anywhere (not NaN)
            return;
        }
        if (float.IsPositiveInfinity(max))
        {
            // The limit of the softmax as those logits grow: their weight shared evenly, every other one 0 (∞ − ∞ is NaN).
            int top = 0;
            foreach (float x in logits) if (float.IsPositiveInfinity(x)) top++;
            for (int i = 0; i < logits.Length; i++) logits[i] = float.IsPositiveInfinity(logits[i]) ? 1f / top : 0f;
            return;
        }
        TensorPrimitives.Subtract(logits, max, logits);
        TensorPrimitives.SoftMax(logits, logits);
    }

    /// <summary>Last key block a query block may see under the base mask (exclusive end), in key blocks.</summary>
    public static int VisibleKeyBlocks(SelectorInput x, int sequence, int queryBlock, int queryBlockSize, int keyBlockSize, bool causal)
    {
        int tk = x.KeyLength(sequence), nkb = (tk + keyBlockSize - 1) / keyBlockSize;
        if (!causal) return nkb;
        int lastRow = Math.Min(x.QueryLength(sequence), (queryBlock + 1) * queryBlockSize) - 1;
        int lastPosition = x.QueryPosition(sequence, lastRow);
        if (lastPosition < 0) return 0;
        return Math.Min(nkb, Math.Min(lastPosition, tk - 1) / keyBlockSize + 1);
    }
}

internal static class SelectorScores
{
    /// <summary>scores[i] = query · rows[i] for the first <paramref name="count"/> rows of a [n, D] array.</summary>
    public static void Dots(ReadOnlySpan<float> query, float[] rows, int count, Span<float> scores)
    {
        int d = query.Length;
        for (int i = 0; i < count; i++) scores[i] = System.Numerics.Tensors.TensorPrimitives.Dot(query, new ReadOnlySpan<float>(rows, i * d, d));
    }
}
