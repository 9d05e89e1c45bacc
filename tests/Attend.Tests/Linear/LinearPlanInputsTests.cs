using Attend.Cuda.Linear;
using Attend.Linear;
using Xunit;

namespace Attend.Tests.Linear;

/// <summary>The option and sequence reading both CUDA linear plans share (runs without a GPU).</summary>
public class LinearPlanInputsTests
{
    [Fact]
    public void FixedDecaysBecomeLogsPerHead()
    {
        float[] log = LinearPlanInputs.LogHeadDecay(new LinearAttentionOptions { HeadDecay = [1f, 0.5f, 0.9f] }, LinearDecay.FixedPerHead, 3);
        Assert.Equal([0f, MathF.Log(0.5f), MathF.Log(0.9f)], log);
        Assert.Equal([0f], LinearPlanInputs.LogHeadDecay(new LinearAttentionOptions(), LinearDecay.ScalarGate, 3));
    }

    [Theory]
    [InlineData(LinearDecay.FixedPerHead, null, "needs HeadDecay")]
    [InlineData(LinearDecay.FixedPerHead, new[] { 0.9f, 0.9f }, "one per query head (H = 3)")]
    [InlineData(LinearDecay.FixedPerHead, new[] { 0.9f, 0f, 0.9f }, "HeadDecay[1] = 0")]
    [InlineData(LinearDecay.FixedPerHead, new[] { 0.9f, 0.9f, 1.5f }, "HeadDecay[2] = 1.5")]
    [InlineData(LinearDecay.None, new[] { 0.9f, 0.9f, 0.9f }, "applies to FixedPerHead only")]
    public void BadHeadDecaysAreRefusedByName(LinearDecay decay, float[]? gamma, string expected)
    {
        var options = new LinearAttentionOptions { HeadDecay = gamma };
        var e = Assert.ThrowsAny<ArgumentException>(() => LinearPlanInputs.LogHeadDecay(options, decay, 3));
        Assert.Equal("options", e.ParamName);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void SequencesAreBatchRowsOrVarlenSegments()
    {
        (int[] starts, int[] lengths) = LinearPlanInputs.Sequences(new LinearShape(3, 70, 2, 2, 64, 64), null);
        Assert.Equal([0, 70, 140], starts);
        Assert.Equal([70, 70, 70], lengths);
        var offsets = new SeqOffsets([0, 1, 1, 131]);
        (starts, lengths) = LinearPlanInputs.Sequences(new LinearShape(1, 131, 2, 2, 64, 64), offsets);
        Assert.Equal([0, 1, 1], starts);
        Assert.Equal([1, 0, 130], lengths);
    }
}
