using System.Runtime.CompilerServices;

namespace Attend.Kernels.Cpu;

/// <summary>
/// One tile of scores, shared by the forward and backward kernels: S = scale·Q Kᵀ over a 64-key block, then the score
/// mod, the mask (partial blocks only) and the sequence end (keys past it become −∞).
/// </summary>
internal static unsafe class ScoreTile
{
    public const int Keys = 64;

    // q: query rows [mp][dp] (rows ≥ mr are padding); kt: Kᵀ panel [dp][64]; s: scores [mp][64], written;
    // derivative: when not null, d mod / d score per element (backward); kc: valid keys of the block;
    // qPos / kPos: positions (key axis) of query row 0 and key column 0.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Compute<TIsa, TVec, TMask, TScore>(float* q, float* kt, float* s, float* derivative,
        int mp, int mr, int kc, int dp, float scale, bool partial, in TMask mask, in TScore score, int seq, int head, int qPos, int kPos)
        where TIsa : struct, IVectorIsa<TVec>
        where TVec : unmanaged
        where TMask : struct, IMaskMod<TMask>
        where TScore : struct, IScoreMod<TScore>
    {
        TileGemm.MultiplyTransposed<TIsa, TVec>(q, dp, kt, Keys, s, Keys, mp, Keys, dp);
        int w = TIsa.Width;
        TVec vscale = TIsa.Splat(scale);
        for (int r = 0; r < mp; r++)
        {
            float* row = s + r * Keys;
            if (r >= mr)
            {
                new Span<float>(row, Keys).Fill(float.NegativeInfinity);
                continue;
            }
            for (int c = 0; c < Keys; c += w) TIsa.Store(TIsa.Mul(TIsa.Load(row + c), vscale), row + c);
            if (!score.IsIdentity)
            {
                for (int c = 0; c < kc; c++)
                {
                    if (derivative != null) derivative[r * Keys + c] = score.Derivative(row[c], seq, head, qPos + r, kPos + c);
                    row[c] = score.Apply(row[c], seq, head, qPos + r, kPos + c);
                }
            }
            if (partial)
            {
                for (int c = 0; c < kc; c++)
                    if (!mask.IsVisible(seq, head, qPos + r, kPos + c)) row[c] = float.NegativeInfinity;
            }
            for (int c = kc; c < Keys; c++) row[c] = float.NegativeInfinity;
        }
    }
}
