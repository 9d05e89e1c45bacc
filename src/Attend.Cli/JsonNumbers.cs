using System.Text.Json;

namespace Attend.Cli;

/// <summary>How every bench's JSON writes a number: JSON has no NaN or infinity, so those (and absent values) are null.</summary>
internal static class JsonNumbers
{
    /// <summary>Writes <paramref name="value"/> under <paramref name="name"/>, or null when it is absent or not finite.</summary>
    public static void Number(Utf8JsonWriter w, string name, double? value)
    {
        if (value is double v && double.IsFinite(v)) w.WriteNumber(name, v);
        else w.WriteNull(name);
    }
}
