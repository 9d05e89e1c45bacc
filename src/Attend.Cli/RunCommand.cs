using System.CommandLine;
using System.Numerics.Tensors;
using Attend.IO;

namespace Attend.Cli;

/// <summary>
/// <c>attend run</c>: reads Q, K and V from <c>.npy</c> files ([B, T, H, D], or [T, H, D] as B = 1; float32 or
/// float16), runs exact attention and writes the output (same element type and rank as Q) and optionally the
/// log-sum-exp (float32, [B, H, Tq], or [H, Tq] for rank-3 inputs).
/// </summary>
internal static class RunCommand
{
    public static Command Create(TextWriter output)
    {
        var q = new Option<string>("--q") { Description = "Queries .npy [B, Tq, H, D] or [Tq, H, D] (float32 or float16).", Required = true };
        var k = new Option<string>("--k") { Description = "Keys .npy [B, Tk, Hkv, D] (Hkv divides H).", Required = true };
        var v = new Option<string>("--v") { Description = "Values .npy, shaped like the keys.", Required = true };
        var outPath = new Option<string>("--out") { Description = "Output .npy, shaped like the queries, same element type.", Required = true };
        var lse = new Option<string?>("--lse") { Description = "Also write the log-sum-exp (natural log, float32) here: [B, H, Tq] ([H, Tq] for rank-3 inputs)." };
        var mask = new Option<string?>("--mask") { Description = MaskSpec.Help };
        var scale = new Option<float?>("--scale") { Description = "Score scale; default 1/sqrt(D)." };
        var softcap = new Option<float?>("--softcap") { Description = "Logit soft cap C: C*tanh(s/C)." };
        var variant = new Option<string?>("--variant") { Description = "Force a kernel variant (see `attend methods`)." };
        var backend = new Option<string?>("--backend") { Description = "cpu (default) or cuda (float32 inputs then run in bf16 on the GPU; the output is written as float32). With --method: the method's kernel calls run there, its selector on the CPU." };
        var method = new Option<string?>("--method") { Description = "Run a named method (see `attend methods`) instead of exact attention." };
        var param = new Option<string[]>("--param") { Description = "A method parameter name=value (repeatable).", AllowMultipleArgumentsPerToken = false };
        var input = new Option<string[]>("--input") { Description = "A further named input name=file.npy for the method (gates, betas, initial state; repeatable)." };
        var form = new Option<string?>("--form") { Description = "Form of a linear/recurrent method: naive | chunked | recurrent (same as --param form=...)." };
        var stateOut = new Option<string?>("--state-out") { Description = "Write the method's final state (linear/recurrent family) to this .npy." };
        var extraOut = new Option<string[]>("--extra-out") { Description = "Write another named result of the method to a .npy, name=file.npy (repeatable; e.g. Based's window_state, the window's last keys and values for the next call's --input window_state=…)." };
        var command = new Command("run", "Run exact attention, or a named method, on Q, K, V read from .npy files.")
        {
            q, k, v, outPath, lse, mask, scale, softcap, variant, method, param, input, form, stateOut, backend, extraOut,
        };
        command.SetAction(parse =>
        {
            if (parse.GetValue(method) is { } name)
            {
                var methodRequest = new MethodRunCommand.Request(name, parse.GetValue(q)!, parse.GetValue(k)!, parse.GetValue(v)!,
                    parse.GetValue(outPath)!, parse.GetValue(lse), parse.GetValue(stateOut), parse.GetValue(param) ?? [],
                    parse.GetValue(input) ?? [], parse.GetValue(form))
                {
                    Backend = parse.GetValue(backend), ExtraOuts = parse.GetValue(extraOut) ?? [],
                };
                if (parse.GetValue(mask) is not null || parse.GetValue(scale) is not null || parse.GetValue(softcap) is not null || parse.GetValue(variant) is not null)
                    throw new UserError("--mask, --scale, --softcap and --variant apply to exact attention; with --method pass them as --param name=value.");
                return MethodRunCommand.Execute(methodRequest, output);
            }
            if (parse.GetValue(param) is { Length: > 0 } || parse.GetValue(input) is { Length: > 0 } || parse.GetValue(form) is not null || parse.GetValue(stateOut) is not null
                || parse.GetValue(extraOut) is { Length: > 0 })
                throw new UserError("--param, --input, --form, --state-out and --extra-out need --method NAME.");
            var request = new RunRequest(parse.GetValue(q)!, parse.GetValue(k)!, parse.GetValue(v)!, parse.GetValue(outPath)!,
                parse.GetValue(lse), parse.GetValue(mask), parse.GetValue(scale), parse.GetValue(softcap), parse.GetValue(variant))
            {
                Backend = parse.GetValue(backend),
            };
            return Execute(request, output);
        });
        return command;
    }

    internal sealed record RunRequest(string Q, string K, string V, string Out, string? Lse, string? Mask, float? Scale, float? Softcap, string? Variant)
    {
        /// <summary>cpu (null) or cuda.</summary>
        public string? Backend { get; init; }
    }

    internal static int Execute(RunRequest r, TextWriter output)
    {
        NpyArray q = NpyFile.Read(r.Q), k = NpyFile.Read(r.K), v = NpyFile.Read(r.V);
        int[] qs = Dims(q, r.Q), ks = Dims(k, r.K), vs = Dims(v, r.V);
        if (k.ElementType != q.ElementType) throw new UserError($"{r.K}: element type {k.ElementType.ShortName()} differs from {r.Q}'s {q.ElementType.ShortName()}.");
        if (v.ElementType != q.ElementType) throw new UserError($"{r.V}: element type {v.ElementType.ShortName()} differs from {r.Q}'s {q.ElementType.ShortName()}.");
        if (k.Shape.Length != q.Shape.Length) throw new UserError($"{r.K}: rank {k.Shape.Length} differs from {r.Q}'s rank {q.Shape.Length}.");
        if (v.Shape.Length != q.Shape.Length) throw new UserError($"{r.V}: rank {v.Shape.Length} differs from {r.Q}'s rank {q.Shape.Length}.");
        // [B, T, H, D] after promoting rank 3 to B = 1.
        if (ks[0] != qs[0]) throw new UserError($"{r.K}: batch {ks[0]} differs from {r.Q}'s batch {qs[0]}.");
        if (ks[3] != qs[3]) throw new UserError($"{r.K}: head dim {ks[3]} differs from {r.Q}'s head dim {qs[3]}.");
        if (ks[2] < 1 || qs[2] % ks[2] != 0)
            throw new UserError($"{r.K}: {ks[2]} KV heads must divide {r.Q}'s {qs[2]} query heads (grouped-query attention).");
        if (!vs.AsSpan().SequenceEqual(ks))
            throw new UserError($"{r.V}: shape ({string.Join(", ", v.Shape)}) differs from {r.K}'s ({string.Join(", ", k.Shape)}).");
        if (r.Scale is float s && !float.IsFinite(s)) throw new UserError($"--scale must be finite; got {s}.");
        if (r.Softcap is float c && (!float.IsFinite(c) || c <= 0)) throw new UserError($"--softcap must be finite and > 0; got {c}.");

        IMaskMod? mask;
        try { mask = r.Mask is null ? null : MaskSpec.Parse(r.Mask, ks[1]); }
        catch (ArgumentException e) { throw new UserError($"--mask: {AttendApp.OneLine(e)}"); }
        bool cuda = string.Equals(r.Backend, "cuda", StringComparison.OrdinalIgnoreCase);
        if (r.Backend is not null && !cuda && !string.Equals(r.Backend, "cpu", StringComparison.OrdinalIgnoreCase))
            throw new UserError($"--backend: unknown backend '{r.Backend}' (cpu or cuda).");
        if (cuda) Attend.Cuda.CudaBackend.Register();
        var options = new AttentionOptions { Mask = mask, Scale = r.Scale, Softcap = r.Softcap, Variant = r.Variant, Backend = cuda ? "cuda" : null };
        if (r.Variant is not null && KernelRegistry.Find(r.Variant) is null)
            throw new UserError($"--variant: unknown kernel variant '{r.Variant}' (known: {string.Join(", ", KernelRegistry.Softmax.Select(x => x.Name))}).");

        string variant = q.ElementType == ElementType.Float32
            ? cuda
                ? Compute(ToBf16(q.AsSingle()), ToBf16(k.AsSingle()), ToBf16(v.AsSingle()), qs, ks, q.Shape, r, options) // tensor cores take 16-bit inputs
                : Compute(q.AsSingle(), k.AsSingle(), v.AsSingle(), qs, ks, q.Shape, r, options)
            : Compute(q.AsHalf(), k.AsHalf(), v.AsHalf(), qs, ks, q.Shape, r, options);
        output.WriteLine($"wrote {r.Out} ({string.Join("x", q.Shape)} {q.ElementType.ShortName()}) with {variant}" + (r.Lse is null ? "" : $"; LSE in {r.Lse}"));
        return 0;
    }

    private static string Compute<T>(T[] q, T[] k, T[] v, int[] qs, int[] ks, int[] outShape, RunRequest r, AttentionOptions options)
        where T : unmanaged
    {
        var o = new T[q.Length];
        float[]? lse = r.Lse is null ? null : new float[(long)qs[0] * qs[2] * qs[1]];
        AttentionKernel kernel;
        try
        {
            kernel = Attention.Forward<T>(
                AttentionLayout.Bthd<T>(q, qs[0], qs[1], qs[2], qs[3]),
                AttentionLayout.Bthd<T>(k, ks[0], ks[1], ks[2], ks[3]),
                AttentionLayout.Bthd<T>(v, ks[0], ks[1], ks[2], ks[3]),
                options,
                AttentionLayout.Bthd<T>(o, qs[0], qs[1], qs[2], qs[3]),
                lse is null ? default : AttentionLayout.Lse(lse, qs[0], qs[2], qs[1]));
        }
        catch (ArgumentException e) when (e.ParamName is "q" or "k" or "v")
        {
            string file = e.ParamName switch { "q" => r.Q, "k" => r.K, _ => r.V };
            throw new UserError($"{file}: {AttendApp.OneLine(e)}");
        }
        catch (NotSupportedException e)
        {
            throw new UserError(options.Backend is null ? $"--variant: {e.Message}" : $"--backend {options.Backend}: {e.Message}");
        }
        Write(r.Out, outShape, o);
        if (lse is not null)
        {
            int[] lseShape = outShape.Length == 4 ? [qs[0], qs[2], qs[1]] : [qs[2], qs[1]];
            NpyFile.Write(r.Lse!, lseShape, lse);
        }
        return kernel.Name;
    }

    private static void Write<T>(string path, int[] shape, T[] data)
    {
        if (data is float[] f) NpyFile.Write(path, shape, f);
        else if (data is Half[] h) NpyFile.Write(path, shape, h);
        else if (data is BFloat16[] b) NpyFile.Write(path, shape, Array.ConvertAll(b, x => (float)x));
        else throw new InvalidOperationException($"No .npy writer for {typeof(T).Name}.");
    }

    private static BFloat16[] ToBf16(float[] data) => Array.ConvertAll(data, x => (BFloat16)x);

    internal static int[] Dims(NpyArray a, string file) => a.Shape.Length switch
    {
        4 => a.Shape,
        3 => [1, a.Shape[0], a.Shape[1], a.Shape[2]],
        _ => throw new UserError($"{file}: expected rank 4 [B, T, H, D] or rank 3 [T, H, D]; got shape ({string.Join(", ", a.Shape)})."),
    };
}
