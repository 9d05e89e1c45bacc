using System.Numerics.Tensors;
using Xunit;

namespace Attend.Tests;

/// <summary>AttentionLayout views: element addressing for [B,T,H,D] and [B,H,T,D], unit and empty dimensions.</summary>
public class LayoutTests
{
    [Theory]
    [InlineData(2, 3, 4, 5)]
    [InlineData(1, 3, 1, 8)]
    [InlineData(1, 1, 1, 1)]
    [InlineData(3, 1, 2, 4)]
    public void ViewsAddressTheRightElements(int b, int t, int h, int d)
    {
        var data = new float[b * t * h * d];
        for (int i = 0; i < data.Length; i++) data[i] = i;
        TensorSpan<float> bthd = AttentionLayout.Bthd<float>(data, b, t, h, d), bhtd = AttentionLayout.Bhtd<float>(data, b, h, t, d);
        Assert.Equal([b, t, h, d], bthd.Lengths.ToArray().Select(x => (int)x));
        Assert.Equal([b, t, h, d], bhtd.Lengths.ToArray().Select(x => (int)x));
        for (int ib = 0; ib < b; ib++)
            for (int it = 0; it < t; it++)
                for (int ih = 0; ih < h; ih++)
                    for (int x = 0; x < d; x++)
                    {
                        Assert.Equal(((ib * t + it) * h + ih) * d + x, bthd[ib, it, ih, x]);
                        Assert.Equal(((ib * h + ih) * t + it) * d + x, bhtd[ib, it, ih, x]);
                    }
        var lse = new float[b * h * t];
        for (int i = 0; i < lse.Length; i++) lse[i] = i;
        TensorSpan<float> l = AttentionLayout.Lse(lse, b, h, t);
        for (int ib = 0; ib < b; ib++)
            for (int ih = 0; ih < h; ih++)
                for (int it = 0; it < t; it++) Assert.Equal((ib * h + ih) * t + it, l[ib, ih, it]);
    }

    [Theory]
    [InlineData(1, 0, 2, 8)]
    [InlineData(2, 0, 1, 8)]
    [InlineData(0, 4, 2, 8)]
    public void EmptyTensorsCanBeViewed(int b, int t, int h, int d)
    {
        var data = Array.Empty<float>();
        Assert.Equal(0, AttentionLayout.Bthd<float>(data, b, t, h, d).FlattenedLength);
        Assert.Equal(0, AttentionLayout.Bhtd<float>(data, b, h, t, d).FlattenedLength);
        Assert.Equal(0, AttentionLayout.Lse(data, b, h, t).FlattenedLength);
    }
}
