namespace Attend.Tests.LinearExtra;

/// <summary>Central finite differences of a float64 loss over float32 inputs, compared with an analytic gradient.</summary>
internal static class FiniteDifference
{
    /// <summary>
    /// The worst |fd − grad| / max(1e-3, max |grad|) over up to <paramref name="samples"/> evenly spread entries of
    /// <paramref name="x"/> (perturbed in place and restored). The step is relative (1e-3·max(1, |x|)) and the difference
    /// divides by the float32 values actually taken, so rounding of the step does not bias it.
    /// Entries for which <paramref name="skip"/> is true are left alone.
    /// </summary>
    public static double WorstError(float[] x, ReadOnlySpan<float> grad, Func<double> loss, int samples = 16, float relativeStep = 1e-3f, Func<int, bool>? skip = null)
    {
        double scale = 1e-3, worst = 0;
        foreach (float g in grad) scale = Math.Max(scale, Math.Abs(g));
        for (int i = 0; i < x.Length; i += Math.Max(1, x.Length / samples))
        {
            if (skip != null && skip(i)) continue;
            float keep = x[i];
            float step = relativeStep * Math.Max(1f, Math.Abs(keep));
            x[i] = keep + step; double up = loss(); float hi = x[i];
            x[i] = keep - step; double down = loss(); float lo = x[i];
            x[i] = keep;
            double fd = (up - down) / ((double)hi - lo);
            if (!float.IsFinite(grad[i])) return double.PositiveInfinity;
            worst = Math.Max(worst, Math.Abs(fd - grad[i]) / scale);
        }
        return worst;
    }

    /// <summary>Σ o·w in float64.</summary>
    public static double Dot(ReadOnlySpan<double> o, ReadOnlySpan<float> w)
    {
        double sum = 0;
        for (int i = 0; i < o.Length; i++) sum += o[i] * w[i];
        return sum;
    }
}
