using Xunit;

namespace Attend.Tests;

public class SeqOffsetsTests
{
    [Fact]
    public void FromLengthsBuildsCumulativeOffsets()
    {
        SeqOffsets o = SeqOffsets.FromLengths([3, 0, 5, 1]);
        Assert.Equal(new[] { 0, 3, 3, 8, 9 }, o.Offsets.ToArray());
        Assert.Equal(4, o.Count);
        Assert.Equal(9, o.TotalTokens);
        Assert.Equal(5, o.MaxLength);
        Assert.Equal(3, o.Start(2));
        Assert.Equal(0, o.Length(1));
    }

    [Fact]
    public void SequenceOfFindsTheOwnerAndSkipsEmptySequences()
    {
        SeqOffsets o = SeqOffsets.FromLengths([3, 0, 5, 1]);
        int[] expected = [0, 0, 0, 2, 2, 2, 2, 2, 3];
        for (int t = 0; t < expected.Length; t++) Assert.Equal(expected[t], o.SequenceOf(t));
        Assert.Equal(-1, o.SequenceOf(-1));
        Assert.Equal(-1, o.SequenceOf(9));
    }

    [Fact]
    public void BadOffsetsAreRejectedWithTheArgumentNamed()
    {
        Assert.Equal("offsets", Assert.Throws<ArgumentException>(() => new SeqOffsets([0])).ParamName);
        Assert.Equal("offsets", Assert.Throws<ArgumentException>(() => new SeqOffsets([1, 2])).ParamName);
        Assert.Equal("offsets", Assert.Throws<ArgumentException>(() => new SeqOffsets([0, 4, 2])).ParamName);
        Assert.Equal("lengths", Assert.Throws<ArgumentException>(() => SeqOffsets.FromLengths([2, -1])).ParamName);
    }
}
