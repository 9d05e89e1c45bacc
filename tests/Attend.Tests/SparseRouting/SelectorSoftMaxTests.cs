using Attend.Methods.Sparse.Routing;
using Xunit;

namespace Attend.Tests.SparseRouting;

/// <summary>The selectors' softmax: shifted by the maximum, defined for every float input.</summary>
public class SelectorSoftMaxTests
{
    [Fact]
    public void LargeLogitsGiveTheFloat64Softmax()
    {
        // TensorPrimitives.SoftMax exponentiates the raw values: [100, 90, 0] came out NaN, NaN, 0.
        float[] logits = [100f, 90f, 0f, -1e30f, 99.5f];
        var expected = new double[logits.Length];
        double max = 100, sum = 0;
        for (int i = 0; i < logits.Length; i++) sum += expected[i] = Math.Exp(logits[i] - max);
        for (int i = 0; i < logits.Length; i++) expected[i] /= sum;
        SelectorMath.SoftMaxInPlace(logits);
        for (int i = 0; i < logits.Length; i++) Assert.Equal(expected[i], logits[i], 6);
    }

    [Fact]
    public void NothingVisibleIsAllZeroAndInfiniteLogitsShareTheWeight()
    {
        float[] hidden = [float.NegativeInfinity, float.NegativeInfinity];
        SelectorMath.SoftMaxInPlace(hidden);
        Assert.Equal([0f, 0f], hidden);
        float[] infinite = [3f, float.PositiveInfinity, float.NegativeInfinity, float.PositiveInfinity];
        SelectorMath.SoftMaxInPlace(infinite);
        Assert.Equal([0f, 0.5f, 0f, 0.5f], infinite);
        SelectorMath.SoftMaxInPlace(Span<float>.Empty); // nothing to do, no exception
    }
}
