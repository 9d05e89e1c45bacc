using System.Globalization;

namespace Attend.Methods;

/// <summary>
/// The <c>name=value</c> parameters of one method call, parsed on demand. Every accessor names the parameter in its
/// exception, and <see cref="ThrowIfUnused"/> rejects names the method does not know, so a typo never goes unnoticed.
/// </summary>
public sealed class MethodArguments
{
    private readonly Dictionary<string, string> _values = new(StringComparer.OrdinalIgnoreCase);
    private readonly HashSet<string> _read = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>No parameters: every method runs with its defaults.</summary>
    public static MethodArguments Empty => new();

    /// <summary>Parameters from <c>name=value</c> pairs.</summary>
    /// <exception cref="ArgumentException">A pair has no <c>=</c>, an empty name, or repeats a name.</exception>
    public static MethodArguments Parse(IEnumerable<string> pairs)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        var args = new MethodArguments();
        foreach (string pair in pairs)
        {
            int eq = pair.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0) throw new ArgumentException($"Parameter '{pair}' must be written name=value.", nameof(pairs));
            args.Set(pair[..eq].Trim(), pair[(eq + 1)..].Trim());
        }
        return args;
    }

    /// <summary>Sets <paramref name="name"/> to <paramref name="value"/>.</summary>
    /// <exception cref="ArgumentException">The name is already set.</exception>
    public MethodArguments Set(string name, string value)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(value);
        if (!_values.TryAdd(name, value)) throw new ArgumentException($"Parameter '{name}' is given twice.", nameof(name));
        return this;
    }

    /// <summary>Whether <paramref name="name"/> was given.</summary>
    public bool Has(string name) => _values.ContainsKey(name);

    /// <summary>The text of <paramref name="name"/>, or <paramref name="fallback"/>.</summary>
    public string GetString(string name, string fallback)
    {
        _read.Add(name);
        return _values.TryGetValue(name, out string? v) ? v : fallback;
    }

    /// <summary>An integer parameter, checked against [<paramref name="min"/>, <paramref name="max"/>].</summary>
    /// <exception cref="ArgumentException">Not an integer, or out of range; the message names the parameter.</exception>
    public int GetInt(string name, int fallback, int min = int.MinValue, int max = int.MaxValue)
    {
        _read.Add(name);
        int value = fallback;
        if (_values.TryGetValue(name, out string? text) && !int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out value))
            throw new ArgumentException($"Parameter '{name}' must be an integer; got '{text}'.", name);
        if (value < min || value > max)
            throw new ArgumentException($"Parameter '{name}' must be in [{min}, {max}]; got {value}.", name);
        return value;
    }

    /// <summary>A real parameter, checked to be finite and within [<paramref name="min"/>, <paramref name="max"/>].</summary>
    /// <exception cref="ArgumentException">Not a finite number, or out of range; the message names the parameter.</exception>
    public double GetDouble(string name, double fallback, double min = double.MinValue, double max = double.MaxValue)
    {
        _read.Add(name);
        double value = fallback;
        if (_values.TryGetValue(name, out string? text) &&
            (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out value) || !double.IsFinite(value)))
            throw new ArgumentException($"Parameter '{name}' must be a finite number; got '{text}'.", name);
        if (value < min || value > max)
            throw new ArgumentException($"Parameter '{name}' must be in [{min}, {max}]; got {value}.", name);
        return value;
    }

    /// <summary>A boolean parameter (<c>true/false/1/0</c>).</summary>
    /// <exception cref="ArgumentException">Not a boolean; the message names the parameter.</exception>
    public bool GetBool(string name, bool fallback)
    {
        _read.Add(name);
        if (!_values.TryGetValue(name, out string? text)) return fallback;
        return text.ToLowerInvariant() switch
        {
            "true" or "1" or "yes" => true,
            "false" or "0" or "no" => false,
            _ => throw new ArgumentException($"Parameter '{name}' must be true or false; got '{text}'.", name),
        };
    }

    /// <summary>One of <paramref name="choices"/> (case-insensitive), returned as spelled in the list.</summary>
    /// <exception cref="ArgumentException">Not one of the choices; the message lists them.</exception>
    public string GetChoice(string name, string fallback, params string[] choices)
    {
        string text = GetString(name, fallback);
        foreach (string c in choices)
            if (string.Equals(c, text, StringComparison.OrdinalIgnoreCase)) return c;
        throw new ArgumentException($"Parameter '{name}' must be one of {string.Join(", ", choices)}; got '{text}'.", name);
    }

    /// <summary>Throws when a parameter was given that the method never read (a typo or a parameter of another method).</summary>
    /// <param name="method">The method's name, for the message.</param>
    /// <exception cref="ArgumentException">Some parameter was not read.</exception>
    public void ThrowIfUnused(string method)
    {
        foreach (string name in _values.Keys)
            if (!_read.Contains(name))
                throw new ArgumentException($"Method '{method}' has no parameter '{name}' (see `attend methods`).", name);
    }
}
