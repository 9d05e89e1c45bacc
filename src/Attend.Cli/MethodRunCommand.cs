using Attend.IO;
using Attend.Methods;

namespace Attend.Cli;

/// <summary>
/// <c>attend run --method NAME</c>: reads Q, K, V (and any <c>--input name=file.npy</c>) as float32, runs the method from
/// <see cref="MethodCatalog.Runnable"/> with the <c>--param</c> values, writes the output (and <c>lse</c> or the final
/// <c>state</c> when asked), and prints what the method reports (density, kernel, …).
/// </summary>
internal static class MethodRunCommand
{
    internal sealed record Request(string Method, string Q, string K, string V, string Out, string? Lse, string? StateOut,
        string[] Params, string[] Inputs, string? Form)
    {
        /// <summary>cpu (null) or cuda: where the method's kernel calls run (its selector stays on the CPU).</summary>
        public string? Backend { get; init; }

        /// <summary><c>--extra-out name=file.npy</c> pairs: further named results of the method to write.</summary>
        public string[] ExtraOuts { get; init; } = [];
    }

    internal static int Execute(Request r, TextWriter output)
    {
        IAttentionMethod method = MethodCatalog.FindRunnable(r.Method) ?? throw new UserError(
            $"--method: unknown method '{r.Method}' (known: {string.Join(", ", MethodCatalog.Runnable.Select(m => m.Info.Name))}).");

        MethodArguments arguments;
        try
        {
            arguments = MethodArguments.Parse(r.Params);
            if (r.Form is not null) arguments.Set("form", r.Form);
        }
        catch (ArgumentException e) { throw new UserError($"--param: {AttendApp.OneLine(e)}"); }

        NpyArray qa = NpyFile.Read(r.Q);
        var inputs = new MethodInputs(Load(qa, r.Q), Load(NpyFile.Read(r.K), r.K), Load(NpyFile.Read(r.V), r.V));
        foreach (string pair in r.Inputs)
        {
            int eq = pair.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0) throw new UserError($"--input: '{pair}' must be written name=file.npy.");
            string name = pair[..eq].Trim(), file = pair[(eq + 1)..].Trim();
            NpyArray a = NpyFile.Read(file);
            try { inputs.Add(name, new MethodTensor(ToSingle(a), a.Shape)); }
            catch (ArgumentException e) { throw new UserError($"--input: {AttendApp.OneLine(e)}"); }
        }

        bool cuda = string.Equals(r.Backend, "cuda", StringComparison.OrdinalIgnoreCase);
        if (r.Backend is not null && !cuda && !string.Equals(r.Backend, "cpu", StringComparison.OrdinalIgnoreCase))
            throw new UserError($"--backend: unknown backend '{r.Backend}' (cpu or cuda).");
        if (cuda) Attend.Cuda.CudaBackend.Register();

        MethodResult result;
        try { result = method.Run(inputs, arguments, cuda ? "cuda" : null); }
        catch (NotSupportedException e) when (cuda)
        {
            throw new UserError($"--backend cuda: {method.Info.Name}: {AttendApp.OneLine(e)}");
        }
        catch (ArgumentException e) when (e.ParamName is "q" or "k" or "v")
        {
            string file = e.ParamName switch { "q" => r.Q, "k" => r.K, _ => r.V };
            throw new UserError($"{file}: {AttendApp.OneLine(e)}");
        }
        catch (ArgumentException e) when (e.ParamName is { } p && arguments.Has(p))
        {
            throw new UserError($"--param {p}: {AttendApp.OneLine(e)}");
        }

        try { inputs.ThrowIfUnread(method.Info.Name); }
        catch (ArgumentException e) { throw new UserError($"--input {e.ParamName}: {AttendApp.OneLine(e)}; nothing was written."); }

        // Asked-for extras the method does not produce are refused before anything is written (a stateless method with
        // --state-out used to leave its output file behind and then fail).
        var extras = new List<(string? Path, string Name, string Option)> { (r.Lse, "lse", "--lse"), (r.StateOut, "state", "--state-out") };
        foreach (string pair in r.ExtraOuts)
        {
            int eq = pair.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0) throw new UserError($"--extra-out: '{pair}' must be written name=file.npy.");
            extras.Add((pair[(eq + 1)..].Trim(), pair[..eq].Trim(), "--extra-out"));
        }
        foreach ((string? path, string name, string option) in extras)
            if (path is not null && !result.Extras.ContainsKey(name))
                throw new UserError($"{option}: method '{method.Info.Name}' produces no '{name}' output" +
                    (result.Extras.Count == 0 ? "" : $" (it produces: {string.Join(", ", result.Extras.Keys.Order(StringComparer.Ordinal))})") + "; nothing was written.");

        // The output keeps the queries' rank and element type.
        int[] outShape = [.. result.Output.Shape];
        if (qa.Shape.Length == 3 && outShape[0] == 1) outShape = outShape[1..];
        Write(r.Out, outShape, result.Output.Data, qa.ElementType);
        var written = new List<string> { r.Out };
        if (r.Lse is not null) written.Add(WriteExtra(result, "lse", r.Lse, method.Info.Name));
        if (r.StateOut is not null) written.Add(WriteExtra(result, "state", r.StateOut, method.Info.Name));
        foreach ((string? path, string name, string option) in extras.Skip(2)) written.Add(WriteExtra(result, name, path!, method.Info.Name));

        output.WriteLine($"{method.Info.Name}: wrote {string.Join(", ", written)}" + (cuda ? " (kernels on cuda, bf16)" : ""));
        if (result.Density is double density) output.WriteLine($"  density: {density:0.####}");
        if (result.SelectorMs is double ms) output.WriteLine($"  selector_ms: {ms:0.###}");
        foreach (var (key, value) in result.Report) output.WriteLine($"  {key}: {value}");
        return 0;
    }

    private static MethodTensor Load(NpyArray a, string file)
    {
        int[] dims = RunCommand.Dims(a, file);
        return new MethodTensor(ToSingle(a), dims);
    }

    private static float[] ToSingle(NpyArray a)
    {
        if (a.ElementType == ElementType.Float32) return a.AsSingle();
        Half[] h = a.AsHalf();
        var f = new float[h.Length];
        for (int i = 0; i < h.Length; i++) f[i] = (float)h[i];
        return f;
    }

    private static string WriteExtra(MethodResult result, string name, string path, string method)
    {
        if (!result.Extras.TryGetValue(name, out MethodTensor? t))
            throw new UserError($"Method '{method}' produces no '{name}' output.");
        NpyFile.Write(path, [.. t.Shape], t.Data);
        return path;
    }

    private static void Write(string path, int[] shape, float[] data, ElementType type)
    {
        if (type == ElementType.Float32) { NpyFile.Write(path, shape, data); return; }
        var h = new Half[data.Length];
        for (int i = 0; i < data.Length; i++) h[i] = (Half)data[i];
        NpyFile.Write(path, shape, h);
    }
}
