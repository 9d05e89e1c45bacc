using System.Runtime.CompilerServices;

namespace Attend.Kernels.Cpu;

/// <summary>
/// Key/value blocks of a group of (sequence, KV head) units, converted to float32 and laid out for the tile
/// products: Kᵀ and Vᵀ panels [D′][64] (D′ = head dim padded to the vector width) and K, V rows [64][D′].
/// Each block is packed once per call and shared by every query head of the group and every query block, so the
/// transposition and conversion cost is paid once per key, not once per tile.
/// </summary>
internal sealed unsafe class KvPanels<T> : IWorkItems where T : unmanaged
{
    public const int BlockKeys = 64;

    private readonly AttentionShape _shape;
    private readonly TensorView<T> _k, _v;
    private readonly int[] _unitSeq, _unitHead, _unitFirstBlock, _blockUnit;
    private readonly float* _kt, _vt, _kRows, _vRows;
    private readonly long _blockFloats;

    public KvPanels(AttentionShape shape, TensorView<T> k, TensorView<T> v, int paddedDim, ReadOnlySpan<(int Seq, int KvHead)> units,
        bool kTransposed, bool vTransposed, bool kRows, bool vRows, int slot)
    {
        _shape = shape;
        _k = k;
        _v = v;
        PaddedDim = paddedDim;
        _unitSeq = new int[units.Length];
        _unitHead = new int[units.Length];
        _unitFirstBlock = new int[units.Length + 1];
        for (int u = 0; u < units.Length; u++)
        {
            _unitSeq[u] = units[u].Seq;
            _unitHead[u] = units[u].KvHead;
            _unitFirstBlock[u + 1] = _unitFirstBlock[u] + BlocksOf(shape, units[u].Seq);
        }
        int blocks = _unitFirstBlock[^1];
        _blockUnit = new int[blocks];
        for (int u = 0; u < units.Length; u++)
            for (int b = _unitFirstBlock[u]; b < _unitFirstBlock[u + 1]; b++) _blockUnit[b] = u;
        _blockFloats = (long)paddedDim * BlockKeys;
        int arrays = (kTransposed ? 1 : 0) + (vTransposed ? 1 : 0) + (kRows ? 1 : 0) + (vRows ? 1 : 0);
        float* p = SharedBuffer.Rent(slot, Math.Max(1, arrays * blocks * _blockFloats)).Pointer;
        if (kTransposed) { _kt = p; p += blocks * _blockFloats; }
        if (vTransposed) { _vt = p; p += blocks * _blockFloats; }
        if (kRows) { _kRows = p; p += blocks * _blockFloats; }
        if (vRows) { _vRows = p; }
        BlockCount = blocks;
    }

    public int PaddedDim { get; }

    public int BlockCount { get; }

    public int UnitCount => _unitSeq.Length;

    public static int BlocksOf(AttentionShape shape, int seq) => (shape.KLen[seq] + BlockKeys - 1) / BlockKeys;

    /// <summary>Floats needed per key block for the given number of layouts.</summary>
    public static long FloatsPerBlock(int paddedDim, int layouts) => (long)paddedDim * BlockKeys * layouts;

    public float* KTransposed(int unit, int block) => _kt + (_unitFirstBlock[unit] + block) * _blockFloats;

    public float* VTransposed(int unit, int block) => _vt + (_unitFirstBlock[unit] + block) * _blockFloats;

    public float* KRows(int unit, int block) => _kRows + (_unitFirstBlock[unit] + block) * _blockFloats;

    public float* VRows(int unit, int block) => _vRows + (_unitFirstBlock[unit] + block) * _blockFloats;

    /// <summary>Packs one key block (item index = block index over all units).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int index)
    {
        int u = _blockUnit[index];
        int kb = index - _unitFirstBlock[u];
        int s = _unitSeq[u], hk = _unitHead[u], b = _shape.SeqBatch[s];
        int dp = PaddedDim, d = _shape.Dim;
        int first = kb * BlockKeys, count = Math.Min(BlockKeys, _shape.KLen[s] - first);
        long offset = index * _blockFloats;
        float* row = Scratch.Get(dp);
        if (_kt != null || _kRows != null)
        {
            for (int c = 0; c < BlockKeys; c++)
            {
                LoadRow(_k, b, _shape.KStart[s] + first + c, hk, c < count, row, d, dp);
                if (_kRows != null) new Span<float>(row, dp).CopyTo(new Span<float>(_kRows + offset + (long)c * dp, dp));
                if (_kt != null) Scatter(row, _kt + offset + c, dp);
            }
        }
        if (_vt != null || _vRows != null)
        {
            for (int c = 0; c < BlockKeys; c++)
            {
                LoadRow(_v, b, _shape.KStart[s] + first + c, hk, c < count, row, d, dp);
                if (_vRows != null) new Span<float>(row, dp).CopyTo(new Span<float>(_vRows + offset + (long)c * dp, dp));
                if (_vt != null) Scatter(row, _vt + offset + c, dp);
            }
        }
    }

    private static void LoadRow(TensorView<T> view, int batch, int token, int head, bool valid, float* row, int d, int dp)
    {
        if (valid)
        {
            ElementConvert.ToSingle(view.Row(batch, token, head), row, d);
            for (int x = d; x < dp; x++) row[x] = 0;
        }
        else
        {
            new Span<float>(row, dp).Clear();
        }
    }

    private static void Scatter(float* row, float* column, int dp)
    {
        for (int x = 0; x < dp; x++) column[(long)x * BlockKeys] = row[x];
    }
}
