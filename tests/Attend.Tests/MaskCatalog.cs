namespace Attend.Tests;

/// <summary>A mask that differs per head and per batch entry (sequence), without a closed form.</summary>
public readonly struct HeadBandMask : IMaskMod<HeadBandMask>
{
    public bool IsVisible(int batch, int head, int q, int k) => Math.Abs(q - k) <= 3 + 9 * head + 4 * batch || (k - q) % (head + 5) == 0;

    public BlockKind ClassifyBlock(int batch, int head, int qStart, int qEnd, int kStart, int kEnd) =>
        BlockClassifier.ByEvaluation(this, batch, head, qStart, qEnd, kStart, kEnd);

    public bool DependsOnHead => true;

    public bool DependsOnBatch => true;

    public override string ToString() => "head-band";
}

/// <summary>Every mask type and a set of combinations, with random parameters.</summary>
internal static class MaskCatalog
{
    public const int Kinds = 16;

    /// <summary>Random document boundaries covering [0, total).</summary>
    public static SeqOffsets Documents(Random rng, int total)
    {
        var lengths = new List<int>();
        int left = total;
        while (left > 0)
        {
            int n = Math.Min(left, rng.Next(5) == 0 ? 1 : rng.Next(1, Math.Max(2, total / 2)));
            lengths.Add(n);
            left -= n;
            if (rng.Next(6) == 0) lengths.Add(0); // an empty document in the middle
        }
        if (lengths.Count == 0) lengths.Add(0);
        return SeqOffsets.FromLengths(lengths.ToArray());
    }

    private static int? Side(Random rng, int t) => rng.Next(5) == 0 ? null : rng.Next(4) == 0 ? 0 : rng.Next(0, Math.Max(1, t));

    /// <summary>Mask number <paramref name="kind"/> (0 ≤ kind &lt; <see cref="Kinds"/>) with parameters drawn for lengths about <paramref name="t"/>.</summary>
    public static IMaskMod Make(int kind, Random rng, int t)
    {
        t = Math.Max(t, 1);
        return kind switch
        {
            0 => Masks.Full,
            1 => Masks.Causal,
            2 => Masks.SlidingWindow(Side(rng, t), Side(rng, t)),
            3 => Masks.PrefixLm(rng.Next(0, t + 3)),
            4 => Masks.BlockCausal(rng.Next(1, t + 2)),
            5 => Masks.Document(Documents(rng, t)),
            6 => Masks.And(Masks.Causal, Masks.SlidingWindow(rng.Next(0, t), null)),
            7 => Masks.And(Masks.Document(Documents(rng, t)), Masks.Causal),
            8 => Masks.Or(Masks.SlidingWindow(rng.Next(0, 20), rng.Next(0, 20)), Masks.PrefixLm(rng.Next(0, t))),
            9 => Masks.Not(Masks.Causal),
            10 => Masks.Or(Masks.Not(Masks.SlidingWindow(rng.Next(0, t), rng.Next(0, t))), Masks.BlockCausal(rng.Next(1, 70))),
            11 => Masks.And(Masks.Not(Masks.Document(Documents(rng, t))), Masks.Causal),
            12 => Masks.Not(Masks.Full),
            13 => new HeadBandMask(),
            14 => Masks.And(Masks.BlockCausal(rng.Next(1, 40)), Masks.Or(Masks.PrefixLm(rng.Next(0, 10)), Masks.SlidingWindow(rng.Next(0, 30), 0))),
            15 => Masks.Or(Masks.And(Masks.Causal, new HeadBandMask()), Masks.Not(Masks.PrefixLm(rng.Next(0, t)))),
            _ => throw new ArgumentOutOfRangeException(nameof(kind)),
        };
    }
}
