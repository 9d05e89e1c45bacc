namespace Attend.Methods;

/// <summary>One parameter a method takes (<c>attend run --method NAME --param name=value</c>).</summary>
/// <param name="Name">The parameter's name, as written after <c>--param</c>.</param>
/// <param name="Type">Its type in words: <c>int</c>, <c>float</c>, <c>bool</c>, <c>string</c>, or a list of choices such as <c>naive|chunked|recurrent</c>.</param>
/// <param name="Default">The value used when it is not given, as text (empty when the parameter is required).</param>
/// <param name="Description">What it controls.</param>
public sealed record MethodParameter(string Name, string Type, string Default, string Description)
{
    /// <summary>Name, type and default on one line, as <c>attend methods</c> prints them.</summary>
    public override string ToString() => Default.Length == 0 ? $"{Name}:{Type}" : $"{Name}:{Type}={Default}";
}
