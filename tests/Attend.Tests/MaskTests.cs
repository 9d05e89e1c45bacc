using Xunit;
using Xunit.Abstractions;

namespace Attend.Tests;

/// <summary>Masks: block classification against per-pair evaluation; BlockMask against the dense mask.</summary>
public class MaskTests(ITestOutputHelper output)
{
    private static string Seed => $"seed {TestData.RunSeed}";

    /// <summary>Counts of (visible, hidden) pairs in a block.</summary>
    private static (long Visible, long Hidden) Evaluate(IMaskMod m, int b, int h, int q0, int q1, int k0, int k1)
    {
        long vis = 0, hid = 0;
        for (int q = q0; q < q1; q++)
            for (int k = k0; k < k1; k++)
                if (m.IsVisible(b, h, q, k)) vis++; else hid++;
        return (vis, hid);
    }

    [Fact]
    public void ClassifyBlockAgreesWithEveryPair()
    {
        var rng = TestData.Rng(300);
        var loose = new List<string>();
        for (int kind = 0; kind < MaskCatalog.Kinds; kind++)
        {
            for (int trial = 0; trial < 40; trial++)
            {
                IMaskMod m = MaskCatalog.Make(kind, rng, rng.Next(1, 300));
                for (int block = 0; block < 25; block++)
                {
                    int q0 = rng.Next(-150, 300), k0 = rng.Next(-150, 300);
                    int q1 = q0 + rng.Next(1, 70), k1 = k0 + rng.Next(1, 70);
                    int b = rng.Next(3), h = rng.Next(4);
                    BlockKind kindOf = m.ClassifyBlock(b, h, q0, q1, k0, k1);
                    var (vis, hid) = Evaluate(m, b, h, q0, q1, k0, k1);
                    string what = $"{Seed}: {m} b{b} h{h} q[{q0},{q1}) k[{k0},{k1}) classified {kindOf}, {vis} visible {hid} hidden";
                    if (kindOf == BlockKind.Empty) Assert.True(vis == 0, what);
                    if (kindOf == BlockKind.Full) Assert.True(hid == 0, what);
                    // Every built-in mask and combinator classifies exactly (Partial only when the block is mixed): a Partial
                    // on a uniform block is not wrong, but costs the kernels mask evaluations (or visits) they could skip.
                    if (kindOf == BlockKind.Partial && (vis == 0 || hid == 0) && loose.Count < 20) loose.Add(what);
                }
            }
        }
        foreach (string l in loose) output.WriteLine(l);
        Assert.True(loose.Count == 0, "Partial on uniform blocks:\n" + string.Join("\n", loose));
    }

    /// <summary>Checks a BlockMask against the dense mask of every stored (sequence, head).</summary>
    private static void CheckAgainstDense(BlockMask bm, IMaskMod m, int sequences, int heads, Func<int, (int Tq, int Tk)> lengths, string what)
    {
        Assert.Equal(m.DependsOnHead ? heads : 1, bm.Heads);
        long visible = 0, partial = 0, full = 0, total = 0;
        int storedSeq = bm.Sequences;
        for (int s = 0; s < storedSeq; s++)
        {
            (int tq, int tk) = lengths(s);
            Assert.Equal(tq, bm.QueryLength(s));
            Assert.Equal(tk, bm.KeyLength(s));
            int shift = tk - tq, bq = bm.QueryBlockSize, bk = bm.KeyBlockSize;
            int nqb = (tq + bq - 1) / bq, nkb = (tk + bk - 1) / bk;
            Assert.Equal(nqb, bm.QueryBlocks(s));
            Assert.Equal(nkb, bm.KeyBlocks(s));
            for (int h = 0; h < bm.Heads; h++)
            {
                var kinds = new BlockKind[nqb, nkb];
                for (int qb = 0; qb < nqb; qb++)
                {
                    ReadOnlySpan<int> pk = bm.PartialKeyBlocks(s, h, qb), fk = bm.FullKeyBlocks(s, h, qb);
                    for (int i = 1; i < pk.Length; i++) Assert.True(pk[i - 1] < pk[i], $"{what}: partial list not ascending");
                    for (int i = 1; i < fk.Length; i++) Assert.True(fk[i - 1] < fk[i], $"{what}: full list not ascending");
                    foreach (int kb in pk) { Assert.InRange(kb, 0, nkb - 1); kinds[qb, kb] = BlockKind.Partial; }
                    foreach (int kb in fk) { Assert.InRange(kb, 0, nkb - 1); Assert.True(kinds[qb, kb] == BlockKind.Empty, $"{what}: block in both lists"); kinds[qb, kb] = BlockKind.Full; }
                    Assert.Equal(pk.Length + fk.Length, bm.VisitedBlocks(s, h, qb));
                    partial += pk.Length;
                    full += fk.Length;
                }
                total += (long)nqb * nkb;
                for (int qb = 0; qb < nqb; qb++)
                {
                    for (int kb = 0; kb < nkb; kb++)
                    {
                        Assert.Equal(kinds[qb, kb], bm.KindOf(s, h, qb, kb));
                        for (int i = qb * bq; i < Math.Min(tq, (qb + 1) * bq); i++)
                        {
                            for (int j = kb * bk; j < Math.Min(tk, (kb + 1) * bk); j++)
                            {
                                bool dense = m.IsVisible(s, h, i + shift, j);
                                bool viaBlocks = kinds[qb, kb] == BlockKind.Full || (kinds[qb, kb] == BlockKind.Partial && m.IsVisible(s, h, i + shift, j));
                                if (dense != viaBlocks) Assert.Fail($"{what}: seq {s} head {h} pair ({i},{j}) dense {dense}, block {kinds[qb, kb]}");
                                if (dense) visible++;
                            }
                        }
                    }
                }
                // Transposed lists are exactly the transpose.
                for (int kb = 0; kb < nkb; kb++)
                {
                    var wantP = new List<int>();
                    var wantF = new List<int>();
                    for (int qb = 0; qb < nqb; qb++)
                    {
                        if (kinds[qb, kb] == BlockKind.Partial) wantP.Add(qb);
                        if (kinds[qb, kb] == BlockKind.Full) wantF.Add(qb);
                    }
                    Assert.True(wantP.SequenceEqual(bm.PartialQueryBlocks(s, h, kb).ToArray()), $"{what}: partial transpose of seq {s} head {h} key block {kb}");
                    Assert.True(wantF.SequenceEqual(bm.FullQueryBlocks(s, h, kb).ToArray()), $"{what}: full transpose of seq {s} head {h} key block {kb}");
                }
            }
        }
        Assert.Equal(partial, bm.PartialBlockCount);
        Assert.Equal(full, bm.FullBlockCount);
        Assert.Equal(total, bm.TotalBlockCount);
        Assert.Equal(total == 0 ? 0 : (double)(partial + full) / total, bm.Density, 12);
        Assert.True(visible == bm.VisiblePairs(), $"{what}: VisiblePairs {bm.VisiblePairs()}, dense count {visible}");
    }

    [Fact]
    public void BlockMaskEqualsDenseMask()
    {
        var rng = TestData.Rng(301);
        int[] sizes = [16, 64];
        for (int kind = 0; kind < MaskCatalog.Kinds; kind++)
        {
            for (int trial = 0; trial < 6; trial++)
            {
                int tq = rng.Next(4) == 0 ? rng.Next(0, 4) : rng.Next(1, 300), tk = rng.Next(3) == 0 ? tq : rng.Next(1, 300);
                if (trial == 0) (tq, tk) = (1, 1);
                int batch = rng.Next(1, 4), heads = rng.Next(1, 4);
                int bq = sizes[rng.Next(2)], bk = sizes[rng.Next(2)];
                IMaskMod m = MaskCatalog.Make(kind, rng, Math.Max(tq, tk));
                BlockMask bm = BlockMask.Create(m, tq, tk, batch, heads, bq, bk);
                string what = $"{Seed}: {m} tq{tq} tk{tk} b{batch} h{heads} blocks {bq}x{bk}";
                Assert.Equal(m.DependsOnBatch ? batch : 1, bm.Sequences);
                Assert.Equal(m.DependsOnBatch, bm.PerSequence);
                CheckAgainstDense(bm, m, batch, heads, _ => (tq, tk), what);
            }
        }
    }

    [Fact]
    public void VarlenBlockMaskPerSequence()
    {
        var rng = TestData.Rng(302);
        for (int kind = 0; kind < MaskCatalog.Kinds; kind++)
        {
            for (int trial = 0; trial < 3; trial++)
            {
                int n = rng.Next(1, 6);
                var ql = new int[n];
                var kl = new int[n];
                for (int s = 0; s < n; s++)
                {
                    ql[s] = rng.Next(4) == 0 ? rng.Next(0, 2) : rng.Next(1, 200);
                    kl[s] = rng.Next(2) == 0 ? ql[s] : rng.Next(0, 200);
                }
                if (trial == 0 && n > 1) { ql[0] = 0; kl[0] = 0; ql[1] = 1; kl[1] = 1; }
                int heads = rng.Next(1, 3), bq = rng.Next(2) == 0 ? 16 : 64, bk = rng.Next(2) == 0 ? 16 : 64;
                IMaskMod m = MaskCatalog.Make(kind, rng, 150);
                BlockMask bm = BlockMask.Create(m, SeqOffsets.FromLengths(ql), SeqOffsets.FromLengths(kl), heads, bq, bk);
                Assert.True(bm.PerSequence);
                Assert.Equal(n, bm.Sequences);
                CheckAgainstDense(bm, m, n, heads, s => (ql[s], kl[s]), $"{Seed}: {m} varlen q[{string.Join(",", ql)}] k[{string.Join(",", kl)}] h{heads} blocks {bq}x{bk}");
            }
        }
    }

    [Fact]
    public void ToStringPicturesASmallCausalMask()
    {
        BlockMask bm = BlockMask.Create(Masks.Causal, 64, 64, 1, 1, 16, 16);
        string[] lines = bm.ToString().Split('\n');
        output.WriteLine(bm.ToString());
        Assert.Contains("causal", lines[0]);
        Assert.Contains("62.5", lines[0]); // 10 of 16 blocks
        Assert.Equal(["░···", "█░··", "██░·", "███░"], lines[1..]);

        // Bottom-right alignment: 2 query blocks against 4 key blocks see the last two diagonals.
        string[] wide = BlockMask.Create(Masks.Causal, 32, 64, 1, 1, 16, 16).ToString().Split('\n');
        Assert.Equal(["██░·", "███░"], wide[1..]);
        // Tq > Tk: the first query blocks see nothing.
        string[] tall = BlockMask.Create(Masks.Causal, 64, 32, 1, 1, 16, 16).ToString().Split('\n');
        Assert.Equal(["··", "··", "░·", "█░"], tall[1..]);
    }

    [Fact]
    public void CausalIsBottomRightAligned()
    {
        // Tq = 3, Tk = 5: query row i sits at position i + 2.
        BlockMask bm = BlockMask.Create(Masks.Causal, 3, 5, 1, 1, 1, 1);
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 5; j++)
                Assert.Equal(j <= i + 2 ? BlockKind.Full : BlockKind.Empty, bm.KindOf(0, 0, i, j));
        Assert.Equal(3 + 4 + 5, bm.VisiblePairs());
    }

    [Fact]
    public void BadParametersNameTheParameter()
    {
        Assert.Equal("left", Assert.Throws<ArgumentOutOfRangeException>(() => new SlidingWindowMask(-1, 0)).ParamName);
        Assert.Equal("right", Assert.Throws<ArgumentOutOfRangeException>(() => new SlidingWindowMask(3, -2)).ParamName);
        Assert.Equal("right", Assert.Throws<ArgumentOutOfRangeException>(() => Masks.SlidingWindow(null, -1)).ParamName);
        Assert.Equal("chunkSize", Assert.Throws<ArgumentOutOfRangeException>(() => new BlockCausalMask(0)).ParamName);
        Assert.Equal("chunkSize", Assert.Throws<ArgumentOutOfRangeException>(() => Masks.BlockCausal(-3)).ParamName);
        Assert.Equal("prefixLength", Assert.Throws<ArgumentOutOfRangeException>(() => new PrefixLmMask(-1)).ParamName);
        Assert.Equal("documents", Assert.Throws<ArgumentNullException>(() => new DocumentMask(null!)).ParamName);
        Assert.Equal("queryBlockSize", Assert.Throws<ArgumentOutOfRangeException>(() => BlockMask.Create(Masks.Causal, 8, 8, 1, 1, 0, 16)).ParamName);
        Assert.Equal("keyBlockSize", Assert.Throws<ArgumentOutOfRangeException>(() => BlockMask.Create(Masks.Causal, 8, 8, 1, 1, 16, 0)).ParamName);
        Assert.Equal("heads", Assert.Throws<ArgumentOutOfRangeException>(() => BlockMask.Create(Masks.Causal, 8, 8, 1, 0)).ParamName);
        Assert.Equal("batch", Assert.Throws<ArgumentOutOfRangeException>(() => BlockMask.Create(Masks.Causal, 8, 8, 0)).ParamName);
        Assert.Equal("queryLength", Assert.Throws<ArgumentOutOfRangeException>(() => BlockMask.Create(Masks.Causal, -1, 8)).ParamName);
        Assert.Equal("keyLength", Assert.Throws<ArgumentOutOfRangeException>(() => BlockMask.Create(Masks.Causal, 8, -1)).ParamName);
    }

    [Fact]
    public void MasksMeanWhatTheySay()
    {
        var w = Masks.SlidingWindow(2, 1);
        Assert.True(w.IsVisible(0, 0, 10, 8));
        Assert.False(w.IsVisible(0, 0, 10, 7));
        Assert.True(w.IsVisible(0, 0, 10, 11));
        Assert.False(w.IsVisible(0, 0, 10, 12));
        var p = Masks.PrefixLm(3);
        Assert.True(p.IsVisible(0, 0, 0, 2));
        Assert.False(p.IsVisible(0, 0, 0, 3));
        Assert.True(p.IsVisible(0, 0, 5, 5));
        var c = Masks.BlockCausal(4);
        Assert.True(c.IsVisible(0, 0, 4, 7));
        Assert.False(c.IsVisible(0, 0, 3, 4));
        Assert.True(c.IsVisible(0, 0, -1, -4));
        Assert.False(c.IsVisible(0, 0, -5, -4));
        var d = Masks.Document(SeqOffsets.FromLengths([2, 0, 3]));
        Assert.True(d.IsVisible(0, 0, 1, 0));
        Assert.False(d.IsVisible(0, 0, 2, 1));
        Assert.True(d.IsVisible(0, 0, 4, 2));
        Assert.False(d.IsVisible(0, 0, 5, 5));
        Assert.False(d.IsVisible(0, 0, -1, -1));
    }
}
