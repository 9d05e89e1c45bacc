namespace Attend.Workloads;

/// <summary>
/// A planted needle: query row <see cref="Query"/> of head <see cref="Head"/> in batch entry <see cref="Batch"/> gets a
/// large logit on the distant key <see cref="Key"/> (Key &lt; Query, so causal attention can see it).
/// </summary>
/// <param name="Batch">Batch entry.</param>
/// <param name="Head">Query head.</param>
/// <param name="Query">Query row (= position in a prefill).</param>
/// <param name="Key">The key the query must find.</param>
public readonly record struct PlantedNeedle(int Batch, int Head, int Query, int Key);

/// <summary>A vertical stripe: key <see cref="Key"/> of KV head <see cref="KvHead"/> in batch entry <see cref="Batch"/> is globally important.</summary>
/// <param name="Batch">Batch entry.</param>
/// <param name="KvHead">Key/value head.</param>
/// <param name="Key">Key position.</param>
public readonly record struct StripeKey(int Batch, int KvHead, int Key);
