namespace Attend;

/// <summary>
/// The backend that softmax calls use when their <see cref="AttentionOptions.Backend"/> is null: <c>cpu</c> unless a
/// caller opened a scope with <see cref="Use"/>. This is how a whole method (a selector plus one or more kernel calls,
/// written once against <see cref="Attention"/>) runs on another backend without every adapter passing the name on:
/// <c>using (AttentionBackend.Use("cuda")) method.Run(inputs, arguments);</c> (see
/// <see cref="Methods.MethodRunner.Run"/>). A backend named in the options always wins over the scope.
/// </summary>
/// <remarks>
/// The scope flows with the execution context (an <see cref="AsyncLocal{T}"/>), so work the method starts on the
/// thread pool inside the scope sees it too, and other threads' calls are unaffected.
/// </remarks>
public static class AttentionBackend
{
    private static readonly AsyncLocal<string?> s_current = new();

    /// <summary>The scoped backend, or null (the registry's default, <c>cpu</c>).</summary>
    public static string? Current => s_current.Value;

    /// <summary>The backend a call with <paramref name="options"/> runs on: the options' own, else the scope's, else null (cpu).</summary>
    public static string? Resolve(AttentionOptions? options) => options?.Backend ?? s_current.Value;

    /// <summary>
    /// Makes <paramref name="backend"/> (null or <c>cpu</c>: the default) the backend of calls that name none, until
    /// the returned scope is disposed (scopes nest; disposing restores the previous one).
    /// </summary>
    public static Scope Use(string? backend)
    {
        string? previous = s_current.Value;
        s_current.Value = string.IsNullOrWhiteSpace(backend) || string.Equals(backend, KernelRegistry.DefaultBackend, StringComparison.OrdinalIgnoreCase)
            ? null
            : backend;
        return new Scope(previous);
    }

    /// <summary>An open backend scope; disposing it restores the backend that was current before.</summary>
    public readonly struct Scope : IDisposable
    {
        private readonly string? _previous;

        internal Scope(string? previous) => _previous = previous;

        /// <summary>Restores the previous backend.</summary>
        public void Dispose() => s_current.Value = _previous;
    }
}
