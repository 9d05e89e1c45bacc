using Attend.Methods;
using Attend.Methods.Linear;
using Xunit;

namespace Attend.Tests.LinearExtra;

public class LinearExtraCatalogTests
{
    [Fact]
    public void EveryExtraMethodIsRunnableFromTheCatalogWithTheFamilyConvention()
    {
        var rng = TestData.Rng(561);
        var c = ExtraCase.Make(rng, new LinearExtraShape(1, 9, 2, 1, 16, 16));
        foreach (IAttentionMethod method in LinearExtraMethods.All)
        {
            Assert.Same(method, MethodCatalog.FindRunnable(method.Info.Name));
            Assert.Equal("linear", method.Info.Family);
            MethodParameter form = Assert.Single(method.Info.Parameters, p => p.Name == "form");
            string[] forms = form.Type.Split('|');
            Assert.Contains("naive", forms);
            Assert.Contains("chunked", forms);
            MethodResult naive = method.Run(c.Inputs(), MethodArguments.Parse(["form=naive"]));
            foreach (string f in forms)
            {
                MethodResult r = method.Run(c.Inputs(), MethodArguments.Parse([$"form={f}"]));
                Assert.Equal(naive.Output.Shape, r.Output.Shape);
                double err = ExtraCase.Error(r.Output.Data, naive.Output.Data);
                Assert.True(err < 1e-4, $"{method.Info.Name} {f}: {err:E2}");
                // A method with a recurrent form returns a state, and a decode step (T = 1) from it runs.
                if (f == "recurrent")
                {
                    MethodTensor state = r.Extras["state"];
                    var step = ExtraCase.Make(rng, c.Shape with { Tokens = 1 });
                    MethodResult next = method.Run(step.Inputs().Add("state", state), MethodArguments.Parse(["form=recurrent"]));
                    Assert.True(ExtraCase.AllFinite(next.Output.Data), method.Info.Name);
                    Assert.Equal(state.Shape, next.Extras["state"].Shape);
                }
            }
            if (!forms.Contains("recurrent"))
            {
                var e = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["form=recurrent"])));
                Assert.Equal("form", e.ParamName);
            }
            var unknown = Assert.ThrowsAny<ArgumentException>(() => method.Run(c.Inputs(), MethodArguments.Parse(["bogus=1"])));
            Assert.Equal("bogus", unknown.ParamName);
        }
    }

    [Fact]
    public void MismatchedShapesNameTheArgumentAndTheDimension()
    {
        var rng = TestData.Rng(562);
        var method = new AarenMethod();
        MethodInputs Inputs(int[] qs, int[] ks, int[] vs) => new(new MethodTensor(TestData.Gaussian<float>(rng, qs.Aggregate(1, (a, b) => a * b)), qs),
            new MethodTensor(TestData.Gaussian<float>(rng, ks.Aggregate(1, (a, b) => a * b)), ks), new MethodTensor(TestData.Gaussian<float>(rng, vs.Aggregate(1, (a, b) => a * b)), vs));
        var e = Assert.ThrowsAny<ArgumentException>(() => method.Run(Inputs([1, 5, 3, 8], [1, 5, 2, 8], [1, 5, 2, 8]), MethodArguments.Empty));
        Assert.Equal("k", e.ParamName);
        Assert.Contains("divide", e.Message);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(Inputs([1, 5, 2, 8], [1, 6, 2, 8], [1, 6, 2, 8]), MethodArguments.Empty));
        Assert.Equal("k", e.ParamName);
        Assert.Contains("dim 1", e.Message);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(Inputs([1, 5, 2, 8], [1, 5, 2, 4], [1, 5, 2, 8]), MethodArguments.Empty));
        Assert.Equal("k", e.ParamName);
        Assert.Contains("dim 3", e.Message);
        e = Assert.ThrowsAny<ArgumentException>(() => method.Run(Inputs([1, 5, 2, 8], [1, 5, 2, 8], [1, 5, 1, 8]), MethodArguments.Empty));
        Assert.Equal("v", e.ParamName);
        var shape = new LinearExtraShape(2, 5, 2, 2, 8, 8, SeqOffsets.FromLengths([2, 3]));
        e = Assert.ThrowsAny<ArgumentException>(() => shape.Validate((int)shape.QueryCount, (int)shape.KeyCount, (int)shape.ValueCount, (int)shape.OutputCount));
        Assert.Equal("offsets", e.ParamName);
    }
}
