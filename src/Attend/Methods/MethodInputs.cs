namespace Attend.Methods;

/// <summary>
/// The named inputs of one <see cref="IAttentionMethod.Run"/> call: <c>q</c>, <c>k</c>, <c>v</c> as <c>[B, T, H, D]</c>
/// (keys and values may have fewer heads), and any others a method documents (gates, betas, an initial state), plus
/// optional varlen offsets (then B = 1 and T is the packed length).
/// </summary>
public sealed class MethodInputs
{
    private readonly Dictionary<string, MethodTensor> _tensors = new(StringComparer.OrdinalIgnoreCase);

    // Every name a method asked for (found or not), so a caller can refuse inputs nobody read (a misspelled name would
    // otherwise change nothing, silently). Methods may run their heads in parallel, hence the lock.
    private readonly HashSet<string> _asked = new(StringComparer.OrdinalIgnoreCase) { "q", "k", "v" };

    /// <summary>Inputs with the three attention tensors.</summary>
    /// <exception cref="ArgumentException">One of them is not rank 4.</exception>
    public MethodInputs(MethodTensor q, MethodTensor k, MethodTensor v)
    {
        Add("q", q);
        Add("k", k);
        Add("v", v);
        foreach (string name in (string[])["q", "k", "v"])
            if (_tensors[name].Shape.Count != 4)
                throw new ArgumentException($"Input '{name}' must be rank 4 [B, T, H, D]; got shape {_tensors[name]}.", name);
    }

    /// <summary>Queries <c>[B, Tq, H, D]</c>.</summary>
    public MethodTensor Q => _tensors["q"];

    /// <summary>Keys <c>[B, Tk, Hkv, D]</c>.</summary>
    public MethodTensor K => _tensors["k"];

    /// <summary>Values <c>[B, Tk, Hkv, Dv]</c>.</summary>
    public MethodTensor V => _tensors["v"];

    /// <summary>Varlen offsets into the packed token axis, or null for a padded batch.</summary>
    public SeqOffsets? Offsets { get; init; }

    /// <summary>Adds an input under <paramref name="name"/> (case-insensitive).</summary>
    /// <exception cref="ArgumentException">The name is taken.</exception>
    public MethodInputs Add(string name, MethodTensor tensor)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(tensor);
        if (!_tensors.TryAdd(name, tensor)) throw new ArgumentException($"Input '{name}' is given twice.", nameof(name));
        return this;
    }

    /// <summary>The input named <paramref name="name"/>, or null.</summary>
    public MethodTensor? Find(string name)
    {
        Ask(name);
        return _tensors.GetValueOrDefault(name);
    }

    /// <summary>The input named <paramref name="name"/>.</summary>
    /// <exception cref="ArgumentException">It was not given; the message says what the method expects.</exception>
    public MethodTensor Get(string name, string expected)
    {
        Ask(name);
        return _tensors.GetValueOrDefault(name) ?? throw new ArgumentException($"Input '{name}' is required: {expected}.", name);
    }

    /// <summary>Every input name.</summary>
    public IEnumerable<string> Names => _tensors.Keys;

    /// <summary>
    /// Throws when an input was given that no <see cref="Find"/> or <see cref="Get"/> asked for since these inputs were
    /// made (call it after <see cref="IAttentionMethod.Run"/>): a misspelled name (<c>betas</c> for <c>beta</c>) must
    /// not be ignored silently.
    /// </summary>
    /// <exception cref="ArgumentException">An unread input; the message names it and the names the method looked for.</exception>
    public void ThrowIfUnread(string method)
    {
        lock (_asked)
        {
            foreach (string name in _tensors.Keys)
                if (!_asked.Contains(name))
                {
                    string asked = string.Join(", ", _asked.Where(n => n is not ("q" or "k" or "v")).Order(StringComparer.Ordinal));
                    throw new ArgumentException($"Input '{name}' is not read by {method} (it looks for: {(asked.Length == 0 ? "no inputs besides q, k, v" : asked)}).", name);
                }
        }
    }

    private void Ask(string name)
    {
        lock (_asked) _asked.Add(name);
    }
}
