namespace Attend.Tests.SparseDynamic;

/// <summary>
/// Small structured Q/K/V for the selector tests (the bench uses the shared workload generator): Gaussian rows plus a
/// sink (key 0 every query likes), locality (a slowly turning direction shared by nearby queries and keys), and a
/// needle: the last <c>QuestionRows</c> queries share a direction only the key at <c>NeedleKey</c> has.
/// </summary>
internal sealed class DynamicWorkload
{
    public required AttnCase Case { get; init; }
    public required AttnInputs<float> Inputs { get; init; }
    public required int NeedleKey { get; init; }
    public required int QuestionRows { get; init; }

    public static DynamicWorkload Create(Random rng, int t, int heads, int kvHeads, int dim, int needleKey, double needle = 3.5, int questionRows = 16)
    {
        var c = new AttnCase { Tq = t, Tk = t, H = heads, Hkv = kvHeads, D = dim, Mask = Masks.Causal };
        AttnInputs<float> x = AttnInputs<float>.Gaussian(c, rng, scale: 0.6);
        double root = Math.Sqrt(Math.Sqrt(dim)); // components of size root·a give scores of a² after the 1/√D scale
        for (int hk = 0; hk < kvHeads; hk++)
        {
            float[] sink = Unit(rng, dim), local = Unit(rng, dim), local2 = Unit(rng, dim), u = Unit(rng, dim);
            for (int j = 0; j < t; j++)
            {
                double angle = j / 40.0;
                for (int x_ = 0; x_ < dim; x_++)
                {
                    long at = ((long)j * kvHeads + hk) * dim + x_;
                    double dir = Math.Cos(angle) * local[x_] + Math.Sin(angle) * local2[x_];
                    x.K[at] += (float)(root * 1.5 * dir);
                    if (j == 0) x.K[at] += (float)(root * 2.0 * sink[x_]);
                    if (j == needleKey) x.K[at] += (float)(root * needle * u[x_]);
                }
            }
            for (int gi = 0; gi < heads / kvHeads; gi++)
            {
                int h = hk * (heads / kvHeads) + gi;
                for (int i = 0; i < t; i++)
                {
                    double angle = i / 40.0;
                    for (int x_ = 0; x_ < dim; x_++)
                    {
                        long at = ((long)i * heads + h) * dim + x_;
                        double dir = Math.Cos(angle) * local[x_] + Math.Sin(angle) * local2[x_];
                        x.Q[at] += (float)(root * 1.5 * dir + root * 1.0 * sink[x_]);
                        if (i >= t - questionRows) x.Q[at] += (float)(root * needle * u[x_]);
                    }
                }
            }
        }
        return new DynamicWorkload { Case = c, Inputs = x, NeedleKey = needleKey, QuestionRows = questionRows };
    }

    private static float[] Unit(Random rng, int dim)
    {
        var g = TestData.Gaussian<float>(rng, dim);
        double norm = Math.Sqrt(g.Sum(v => (double)v * v));
        for (int i = 0; i < dim; i++) g[i] = (float)(g[i] / norm);
        return g;
    }

    // ‖o − o_exact‖_F / ‖o_exact‖_F: the mean behaviour (the max-norm measure is dominated by single rows).
    public static double Frobenius(float[] o, double[] exact)
    {
        double num = 0, den = 0;
        for (int i = 0; i < exact.Length; i++)
        {
            num += (o[i] - exact[i]) * (o[i] - exact[i]);
            den += exact[i] * exact[i];
        }
        return Math.Sqrt(num / den);
    }

}
