using System.Runtime.CompilerServices;

namespace Attend.Kernels.Cpu;

/// <summary>
/// One tile of scores, shared by the forward, backward and decode kernels: S = scale·Q Kᵀ over a 64-key block, then
/// the score mod, the mask (partial blocks only) and the sequence end (keys past it become −∞).
/// </summary>
internal static unsafe class ScoreTile
{
    public const int Keys = 64;

    // q: query rows [mp][dp] (rows ≥ mr are padding); kt: Kᵀ panel [dp][64]; s: scores [mp][64], written.
    // scale: multiplier of q·k, or 1 when the caller folded it into q already.
    // derivative: when not null, d mod / d score per element (backward).
    // rowMax: when not null, each row's maximum after masking (forward); kc: valid keys of the block;
    // qPos / kPos: positions (key axis) of query row 0 and key column 0.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Compute<TIsa, TVec, TMask, TScore>(float* q, float* kt, float* s, float* derivative, float* rowMax,
        int mp, int mr, int kc, int dp, float scale, bool partial, in TMask mask, in TScore score, int seq, int head, int qPos, int kPos)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
        where TMask : struct, IMaskMod<TMask>
        where TScore : struct, IScoreMod<TScore>
    {
        TileGemm.MultiplyTransposed<TIsa, TVec>(q, dp, kt, Keys, s, Keys, mp, Keys, dp);
        Finish<TIsa, TVec, TMask, TScore>(s, derivative, rowMax, mp, mr, kc, scale, partial, mask, score, seq, head, qPos, kPos);
    }

    /// <summary>The part after the product: scale, score mod, mask, sequence end, row maxima.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    // visible: when not null (partial blocks), bit c of visible[r] says whether row r sees column c, evaluated by the
    // caller already (the forward evaluates the mask first to skip the empty parts of the block).
    public static void Finish<TIsa, TVec, TMask, TScore>(float* s, float* derivative, float* rowMax,
        int mp, int mr, int kc, float scale, bool partial, in TMask mask, in TScore score, int seq, int head, int qPos, int kPos, ulong* visible = null)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
        where TMask : struct, IMaskMod<TMask>
        where TScore : struct, IScoreMod<TScore>
    {
        int w = TIsa.Width;
        TVec vscale = TIsa.Splat(scale);
        bool simple = score.IsIdentity && !partial && kc == Keys;
        for (int r = 0; r < mp; r++)
        {
            float* row = s + r * Keys;
            if (r >= mr)
            {
                new Span<float>(row, Keys).Fill(float.NegativeInfinity);
                if (rowMax != null) rowMax[r] = float.NegativeInfinity;
                continue;
            }
            if (simple)
            {
                // The common case (full block, no mod): one pass that scales and takes the maximum.
                TVec mv = TIsa.Splat(float.NegativeInfinity);
                for (int c = 0; c < Keys; c += w)
                {
                    TVec x = TIsa.Load(row + c);
                    if (scale != 1f)
                    {
                        x = TIsa.Mul(x, vscale);
                        TIsa.Store(x, row + c);
                    }
                    mv = TIsa.Max(mv, x);
                }
                if (rowMax != null) rowMax[r] = TIsa.MaxAcross(mv);
                continue;
            }
            if (scale != 1f)
                for (int c = 0; c < Keys; c += w) TIsa.Store(TIsa.Mul(TIsa.Load(row + c), vscale), row + c);
            if (!score.IsIdentity)
            {
                for (int c = 0; c < kc; c++)
                {
                    if (derivative != null) derivative[r * Keys + c] = score.Derivative(row[c], seq, head, qPos + r, kPos + c);
                    row[c] = score.Apply(row[c], seq, head, qPos + r, kPos + c);
                }
            }
            if (partial && visible != null)
            {
                // Only the hidden columns are touched, one set bit at a time (a partial block's rows are mostly
                // visible or mostly out of the computed range, which the caller marks visible when it is −∞ already).
                ulong hidden = ~visible[r] & (kc == Keys ? ulong.MaxValue : (1UL << kc) - 1);
                while (hidden != 0)
                {
                    row[System.Numerics.BitOperations.TrailingZeroCount(hidden)] = float.NegativeInfinity;
                    hidden &= hidden - 1;
                }
            }
            else if (partial)
            {
                for (int c = 0; c < kc; c++)
                    if (!mask.IsVisible(seq, head, qPos + r, kPos + c)) row[c] = float.NegativeInfinity;
            }
            for (int c = kc; c < Keys; c++) row[c] = float.NegativeInfinity;
            if (rowMax != null)
            {
                TVec mv = TIsa.Load(row);
                for (int c = w; c < Keys; c += w) mv = TIsa.Max(mv, TIsa.Load(row + c));
                rowMax[r] = TIsa.MaxAcross(mv);
            }
        }
    }
}
