using System.Runtime.InteropServices;

namespace Attend.Cuda;

/// <summary>
/// A forward attention call prepared for the GPU: the block structure, mask bits, sequence table and score-mod
/// parameters uploaded once, the kernel specialisation loaded. <see cref="Run"/> then only launches, so a plan is
/// reused across layers and bench repetitions. Built by <see cref="CudaAttention.Plan"/>.
/// </summary>
public sealed unsafe class CudaAttentionPlan : IDisposable
{
    private readonly CudaContext _context;
    private readonly CudaKernelFunction _kernel;
    private readonly bool _wgmma; // the wgmma form of the forward kernel (Hopper; CudaFlashForward.UsesWgmma)
    private readonly DeviceBuffer _sequences, _rowPtr, _items, _bits, _slopes;
    private readonly FlashBlockPlan _blocks;
    private readonly float _scale;
    private readonly float _softcap;

    internal CudaAttentionPlan(CudaContext context, CudaGeometry geometry, ElementType type, FlashBlockPlan blocks, CudaScoreForm score, float scale)
    {
        _context = context;
        Geometry = geometry;
        ElementType = type;
        _blocks = blocks;
        _scale = scale;
        _softcap = score.Softcap ?? 1f;
        if (score.AlibiSlopes is { } slopes && slopes.Length < geometry.Heads)
            throw new ArgumentException($"ALiBi has {slopes.Length} slopes; the call has {geometry.Heads} query heads.", "options");
        _wgmma = CudaFlashForward.UsesWgmma(context, geometry.Dim);
        _kernel = CudaFlashForward.Get(context, geometry.Dim, type, score.Softcap is not null, score.AlibiSlopes is not null, blocks.PartialHeavy, _wgmma);
        var owned = new List<DeviceBuffer>();
        try
        {
            _sequences = Track(DeviceBuffer.From<int>(context, geometry.SequenceTable), owned);
            _rowPtr = Track(DeviceBuffer.From<int>(context, blocks.RowPtr), owned);
            _items = Track(DeviceBuffer.From<int>(context, blocks.Items.Length > 0 ? blocks.Items : [0, -1]), owned);
            _bits = Track(DeviceBuffer.From<ulong>(context, blocks.Bits.Length > 0 ? blocks.Bits : [0UL]), owned);
            _slopes = Track(DeviceBuffer.From<float>(context, score.AlibiSlopes ?? [0f]), owned);
        }
        catch
        {
            foreach (DeviceBuffer b in owned) b.Dispose();
            throw;
        }
    }

    private static DeviceBuffer Track(DeviceBuffer b, List<DeviceBuffer> owned)
    {
        owned.Add(b);
        return b;
    }

    /// <summary>The call's geometry.</summary>
    internal CudaGeometry Geometry { get; }

    /// <summary>bf16 or fp16.</summary>
    public ElementType ElementType { get; }

    /// <summary>Blocks the kernel visits (over stored mask entries and heads).</summary>
    public int VisitedBlocks => _blocks.ItemCount;

    /// <summary>Registers per thread of the loaded kernel (from the driver).</summary>
    public int KernelRegisters => _kernel.Registers;

    /// <summary>NVRTC seconds this plan's kernel cost (0 when it came from the disk cache or an earlier plan).</summary>
    public double CompileSeconds => _kernel.Image.CompileSeconds;

    /// <summary>
    /// Queues the forward on <paramref name="stream"/> (null: the default stream): output [B, Tq, H, D] and, when
    /// <paramref name="lse"/> is given, the natural-log LSE [B, H, Tq] as float32. Allocates nothing.
    /// </summary>
    /// <exception cref="ArgumentException">Tensors that do not match the plan; the message names the argument.</exception>
    public void Run(CudaTensor q, CudaTensor k, CudaTensor v, CudaTensor output, DeviceBuffer? lse = null, CudaStream? stream = null)
    {
        CudaGeometry g = Geometry;
        Require(q, nameof(q), g.Batch, g.TokensQ, g.Heads);
        Require(k, nameof(k), g.Batch, g.TokensK, g.KvHeads);
        Require(v, nameof(v), g.Batch, g.TokensK, g.KvHeads);
        Require(output, nameof(output), g.Batch, g.TokensQ, g.Heads);
        long lseBytes = (long)g.Batch * g.Heads * g.TokensQ * sizeof(float);
        if (lse is not null && lse.Bytes < lseBytes)
            throw new ArgumentException($"lse holds {lse.Bytes} bytes; [B, H, Tq] float32 needs {lseBytes}.", nameof(lse));
        if (g.Sequences == 0 || _blocks.MaxQueryBlocks == 0 || g.Heads == 0) return;
        var args = new Arguments
        {
            Q = q.Buffer.Pointer, K = k.Buffer.Pointer, V = v.Buffer.Pointer, O = output.Buffer.Pointer, Lse = lse?.Pointer ?? 0,
            Seqs = _sequences.Pointer, RowPtr = _rowPtr.Pointer, Items = _items.Pointer, Bits = _bits.Pointer, Slopes = _slopes.Pointer,
            Heads = g.Heads, KvHeads = g.KvHeads, TokensQ = g.TokensQ, TokensK = g.TokensK,
            MaskPerSequence = _blocks.PerSequence ? 1 : 0, MaskHeads = _blocks.MaskHeads, MaxQBlocks = _blocks.MaxQueryBlocks,
            Scale = _scale, Softcap = _softcap,
        };
        void** p = stackalloc void*[19];
        p[0] = &args.Q; p[1] = &args.K; p[2] = &args.V; p[3] = &args.O; p[4] = &args.Lse;
        p[5] = &args.Seqs; p[6] = &args.RowPtr; p[7] = &args.Items; p[8] = &args.Bits; p[9] = &args.Slopes;
        p[10] = &args.Heads; p[11] = &args.KvHeads; p[12] = &args.TokensQ; p[13] = &args.TokensK;
        p[14] = &args.MaskPerSequence; p[15] = &args.MaskHeads; p[16] = &args.MaxQBlocks; p[17] = &args.Scale; p[18] = &args.Softcap;
        _kernel.Launch((uint)g.Heads, (uint)_blocks.MaxQueryBlocks, (uint)g.Sequences, (uint)CudaFlashForward.Threads(g.Dim, _wgmma),
            (uint)CudaFlashForward.SharedBytes(g.Dim, _wgmma), stream, p);
    }

    private void Require(CudaTensor t, string name, int batch, int tokens, int heads)
    {
        ArgumentNullException.ThrowIfNull(t, name);
        if (t.ElementType != ElementType)
            throw new ArgumentException($"{name} holds {t.ElementType.ShortName()}; the plan is for {ElementType.ShortName()}.", name);
        if (t.Batch != batch || t.Tokens != tokens || t.Heads != heads || t.Dim != Geometry.Dim)
            throw new ArgumentException($"{name} must have shape [{batch}, {tokens}, {heads}, {Geometry.Dim}] as planned; got [{t.Batch}, {t.Tokens}, {t.Heads}, {t.Dim}].", name);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Arguments
    {
        public ulong Q, K, V, O, Lse, Seqs, RowPtr, Items, Bits, Slopes;
        public int Heads, KvHeads, TokensQ, TokensK, MaskPerSequence, MaskHeads, MaxQBlocks;
        public float Scale, Softcap;
    }

    /// <summary>Frees the plan's device buffers (the loaded kernel stays for later plans).</summary>
    public void Dispose()
    {
        _sequences.Dispose();
        _rowPtr.Dispose();
        _items.Dispose();
        _bits.Dispose();
        _slopes.Dispose();
    }
}

/// <summary>
/// Where each sequence of a call lives in contiguous [B, T, H, D] tensors: per sequence (batch index, first query
/// token, query count, first key token, key count), the table the kernel reads.
/// </summary>
internal sealed record CudaGeometry(int Batch, int TokensQ, int TokensK, int Heads, int KvHeads, int Dim, int[] SequenceTable)
{
    public int Sequences => SequenceTable.Length / 5;

    /// <summary>The geometry of a validated host call.</summary>
    public static CudaGeometry From(AttentionShape shape)
    {
        var table = new int[shape.Sequences * 5];
        for (int s = 0; s < shape.Sequences; s++)
        {
            table[5 * s] = shape.SeqBatch[s];
            table[5 * s + 1] = shape.QStart[s];
            table[5 * s + 2] = shape.QLen[s];
            table[5 * s + 3] = shape.KStart[s];
            table[5 * s + 4] = shape.KLen[s];
        }
        return new CudaGeometry(shape.Batch, shape.QueryTokens, shape.KeyTokens, shape.Heads, shape.KvHeads, shape.Dim, table);
    }
}
