namespace Attend.Methods.Sparse;

/// <summary>
/// Runs a method on a packed (varlen) batch one sequence at a time, so that every sequence gets exactly the plan and
/// output it gets alone: the contract of every sparse method on a ragged batch. Methods whose plan has settings that
/// depend on the length (budgets, span lengths, list or cluster counts) or that decide a pattern per head from the data
/// use it, rather than deriving those settings from the longest sequence or the packed total.
/// </summary>
/// <remarks>
/// The sequences run one after another (each run is parallel inside); outputs and the <c>lse</c> extra are scattered
/// into the packed tensors, the density is the mean of the sequences' densities weighted by the pairs of their base
/// (causal or full), selector times add up, and the coverage maps packed coordinates to each sequence's coverage.
/// Other extras of the per-sequence runs are not kept.
/// </remarks>
public static class PackedBatch
{
    /// <summary>
    /// Runs <paramref name="runOne"/> on each sequence of <paramref name="inputs"/> (which must have offsets) as a batch
    /// of one and assembles the packed result; <paramref name="causal"/> selects the density's base (causal or full pairs).
    /// </summary>
    /// <exception cref="ArgumentException">Inputs without offsets, or q/k/v not packed along the offsets (parameter <c>offsets</c>).</exception>
    public static MethodResult RunEachSequence(MethodInputs inputs, MethodArguments arguments, bool causal, Func<MethodInputs, MethodArguments, MethodResult> runOne)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        ArgumentNullException.ThrowIfNull(runOne);
        SeqOffsets offsets = inputs.Offsets ?? throw new ArgumentException("A packed batch needs varlen offsets.", "offsets");
        MethodTensor q = inputs.Q, k = inputs.K, v = inputs.V;
        int total = offsets.TotalTokens, h = q.Dim(2), d = q.Dim(3), hkv = k.Dim(2), dk = k.Dim(3), dv = v.Dim(3);
        if (q.Dim(0) != 1 || k.Dim(0) != 1 || v.Dim(0) != 1 || q.Dim(1) != total || k.Dim(1) != total || v.Dim(1) != total)
            throw new ArgumentException($"Packed inputs must be [1, {total}, H, D] (the offsets cover {total} tokens); got q {q}, k {k}, v {v}.", "offsets");

        var o = new float[(long)total * h * dv];
        var lse = new float[(long)h * total];
        bool hasLse = true;
        double weightedDensity = 0, basePairs = 0, selectorMs = 0;
        bool hasDensity = true, hasSelector = false;
        var coverages = new IPairCoverage?[offsets.Count];
        var report = new List<KeyValuePair<string, string>>();
        for (int s = 0; s < offsets.Count; s++)
        {
            int start = offsets.Start(s), length = offsets.Length(s);
            if (length == 0) continue;
            var alone = new MethodInputs(
                new MethodTensor(q.Data.AsSpan(start * h * d, length * h * d).ToArray(), 1, length, h, d),
                new MethodTensor(k.Data.AsSpan(start * hkv * dk, length * hkv * dk).ToArray(), 1, length, hkv, dk),
                new MethodTensor(v.Data.AsSpan(start * hkv * dv, length * hkv * dv).ToArray(), 1, length, hkv, dv));
            MethodResult one = runOne(alone, arguments);
            one.Output.Data.AsSpan().CopyTo(o.AsSpan(start * h * dv, length * h * dv));
            if (one.Extras.TryGetValue("lse", out MethodTensor? l))
                for (int head = 0; head < h; head++) l.Data.AsSpan(head * length, length).CopyTo(lse.AsSpan(head * total + start, length));
            else hasLse = false;
            double pairs = causal ? length * (length + 1.0) / 2 : (double)length * length;
            if (one.Density is double density) weightedDensity += density * pairs; else hasDensity = false;
            basePairs += pairs;
            if (one.SelectorMs is double ms) { selectorMs += ms; hasSelector = true; }
            coverages[s] = one.Coverage;
            foreach (KeyValuePair<string, string> entry in one.Report) report.Add(new($"{entry.Key} (seq {s})", entry.Value));
        }
        // A batch of empty sequences ran nothing: one empty call still checks the parameters (a misspelled one is refused).
        if (total == 0) runOne(new MethodInputs(new MethodTensor([], 1, 0, h, d), new MethodTensor([], 1, 0, hkv, dk), new MethodTensor([], 1, 0, hkv, dv)), arguments);
        bool covered = true;
        for (int s = 0; s < offsets.Count; s++) covered &= offsets.Length(s) == 0 || coverages[s] is not null;
        var result = new MethodResult(new MethodTensor(o, 1, total, h, dv))
        {
            Density = hasDensity ? (basePairs == 0 ? 0 : weightedDensity / basePairs) : null,
            SelectorMs = hasSelector ? selectorMs : null,
            Coverage = covered ? new PackedCoverage(offsets, coverages) : null,
        };
        if (hasLse) result.Extras["lse"] = new MethodTensor(lse, 1, h, total);
        result.Report.Add(new("varlen", $"{offsets.Count} sequences, each planned alone"));
        result.Report.AddRange(report);
        return result;
    }

    /// <summary>
    /// Runs <paramref name="runOne"/> on each entry of a padded batch (<paramref name="inputs"/> without offsets,
    /// <c>[B, T, H, D]</c>) as a batch of one and assembles the batch result, for settings a method calibrates on its
    /// whole input (MInference's pattern search); density, selector time and coverage as for a packed batch.
    /// </summary>
    /// <exception cref="ArgumentException">Inputs with offsets (use <see cref="RunEachSequence"/>), or a batch that q, k and v disagree on (parameter <c>k</c>).</exception>
    public static MethodResult RunEachEntry(MethodInputs inputs, MethodArguments arguments, bool causal, Func<MethodInputs, MethodArguments, MethodResult> runOne)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(arguments);
        ArgumentNullException.ThrowIfNull(runOne);
        if (inputs.Offsets is not null) throw new ArgumentException("A padded batch has no varlen offsets; use RunEachSequence.", "offsets");
        MethodTensor q = inputs.Q, k = inputs.K, v = inputs.V;
        int b = q.Dim(0), tq = q.Dim(1), h = q.Dim(2), d = q.Dim(3), tk = k.Dim(1), hkv = k.Dim(2), dk = k.Dim(3), dv = v.Dim(3);
        if (k.Dim(0) != b || v.Dim(0) != b || v.Dim(1) != tk)
            throw new ArgumentException($"q {q}, k {k} and v {v} must agree on the batch (dimension 0), and k and v on the keys (dimension 1).", "k");
        var o = new float[(long)b * tq * h * dv];
        var lse = new float[(long)b * h * tq];
        bool hasLse = true, hasDensity = true, hasSelector = false;
        double weightedDensity = 0, basePairs = 0, selectorMs = 0;
        var coverages = new IPairCoverage?[b];
        var report = new List<KeyValuePair<string, string>>();
        for (int entry = 0; entry < b; entry++)
        {
            var alone = new MethodInputs(
                new MethodTensor(q.Data.AsSpan(entry * tq * h * d, tq * h * d).ToArray(), 1, tq, h, d),
                new MethodTensor(k.Data.AsSpan(entry * tk * hkv * dk, tk * hkv * dk).ToArray(), 1, tk, hkv, dk),
                new MethodTensor(v.Data.AsSpan(entry * tk * hkv * dv, tk * hkv * dv).ToArray(), 1, tk, hkv, dv));
            MethodResult one = runOne(alone, arguments);
            one.Output.Data.AsSpan().CopyTo(o.AsSpan(entry * tq * h * dv, tq * h * dv));
            if (one.Extras.TryGetValue("lse", out MethodTensor? l)) l.Data.AsSpan().CopyTo(lse.AsSpan(entry * h * tq, h * tq));
            else hasLse = false;
            // Causal pairs bottom-right aligned: query row i sees keys ≤ i + tk − tq.
            double pairs = 0;
            if (causal) for (long i = 0; i < tq; i++) pairs += Math.Clamp(i + tk - tq + 1, 0, tk);
            else pairs = (double)tq * tk;
            if (one.Density is double density) weightedDensity += density * pairs; else hasDensity = false;
            basePairs += pairs;
            if (one.SelectorMs is double ms) { selectorMs += ms; hasSelector = true; }
            coverages[entry] = one.Coverage;
            foreach (KeyValuePair<string, string> item in one.Report) report.Add(new($"{item.Key} (entry {entry})", item.Value));
        }
        bool covered = Array.TrueForAll(coverages, c => c is not null);
        var result = new MethodResult(new MethodTensor(o, b, tq, h, dv))
        {
            Density = hasDensity ? (basePairs == 0 ? 0 : weightedDensity / basePairs) : null,
            SelectorMs = hasSelector ? selectorMs : null,
            Coverage = covered ? new EntryCoverage(coverages) : null,
        };
        if (hasLse) result.Extras["lse"] = new MethodTensor(lse, b, h, tq);
        result.Report.Add(new("batch", $"{b} entries, each planned alone"));
        result.Report.AddRange(report);
        return result;
    }

    // Batch entry b of a padded run answered by entry b's own coverage (a batch of one).
    private sealed class EntryCoverage(IPairCoverage?[] parts) : IPairCoverage
    {
        public void CoveredKeys(int batch, int head, int query, Span<bool> covered) => parts[batch]!.CoveredKeys(0, head, query, covered);
    }

    /// <summary>
    /// The coverage of a packed run: packed coordinates (batch 0, packed query row, packed keys) mapped to each
    /// sequence's own coverage (the plan of that sequence's run, where the method reports its plan as its coverage).
    /// </summary>
    public sealed class PackedCoverage : IPairCoverage
    {
        private readonly SeqOffsets _offsets;
        private readonly IPairCoverage?[] _parts;

        internal PackedCoverage(SeqOffsets offsets, IPairCoverage?[] parts)
        {
            _offsets = offsets;
            _parts = parts;
        }

        /// <summary>Each sequence's own coverage (null for an empty sequence).</summary>
        public IReadOnlyList<IPairCoverage?> Sequences => _parts;

        /// <inheritdoc/>
        public void CoveredKeys(int batch, int head, int query, Span<bool> covered)
        {
            if (covered.Length != _offsets.TotalTokens)
                throw new ArgumentException($"The span has {covered.Length} entries but there are {_offsets.TotalTokens} keys.", nameof(covered));
            covered.Clear();
            int s = 0;
            while (s + 1 < _offsets.Count && _offsets.Start(s + 1) <= query) s++;
            int start = _offsets.Start(s), length = _offsets.Length(s);
            if (length == 0 || _parts[s] is not IPairCoverage part) return;
            part.CoveredKeys(0, head, query - start, covered.Slice(start, length));
        }
    }
}
