namespace Attend.Methods;

/// <summary>
/// The uniform front of one seed method, through which <c>attend run --method</c>, <c>attend bench sparse|linear</c>
/// and the catalog reach it. Each method also has its own typed entry point (spans, options record, plan/run); this
/// interface only adapts that entry point to named float32 tensors and text parameters.
/// </summary>
public interface IAttentionMethod
{
    /// <summary>Name, family, paper, status and the parameters the method takes.</summary>
    MethodInfo Info { get; }

    /// <summary>
    /// Runs the method on <paramref name="inputs"/> (at least <c>q</c>, <c>k</c>, <c>v</c>, <c>[B, T, H, D]</c>) with
    /// <paramref name="arguments"/>, which it must read through <see cref="MethodArguments"/> and finish with
    /// <see cref="MethodArguments.ThrowIfUnused"/>.
    /// </summary>
    /// <exception cref="ArgumentException">A missing or mis-shaped input, or a bad parameter; the message names it.</exception>
    MethodResult Run(MethodInputs inputs, MethodArguments arguments);
}
