using System.Globalization;

namespace Attend;

/// <summary>
/// Parses the text form of a mask (the <c>--mask</c> option of <c>attend run</c>, the <c>mask</c> parameter of methods): one or more terms joined by <c>+</c> (all must allow a pair):
/// <c>causal</c>, <c>window:L,R</c> (a side may be <c>inf</c>), <c>prefix:N</c>, <c>doc:o0,o1,…</c> (cumulative
/// document offsets starting at 0 and ending at the key length), <c>blockcausal:C</c>, <c>full</c>.
/// Example: <c>causal+doc:0,5,9</c>.
/// </summary>
public static class MaskSpec
{
    /// <summary>The help text of the option.</summary>
    public const string Help =
        "Mask: causal | window:L,R | prefix:N | doc:o0,o1,... | blockcausal:C | full; join terms with '+' to intersect them, e.g. causal+doc:0,5,9 " +
        "(doc offsets are cumulative document starts, from 0 to the key length; a window side may be 'inf').";

    /// <summary>Parses <paramref name="text"/> into a mask (null for <c>full</c>); <paramref name="keyLength"/> checks <c>doc:</c> offsets.</summary>
    /// <exception cref="ArgumentException">A malformed term; the message quotes it (parameter name <c>mask</c>).</exception>
    public static IMaskMod? Parse(string text, int keyLength)
    {
        IMaskMod? result = null;
        foreach (string raw in text.Split('+'))
        {
            string term = raw.Trim();
            IMaskMod? mask = ParseTerm(term, keyLength);
            if (mask is null) continue;
            result = result is null ? mask : Intersect(result, mask);
        }
        return result;
    }

    private static IMaskMod? ParseTerm(string term, int keyLength)
    {
        int colon = term.IndexOf(':');
        string name = (colon < 0 ? term : term[..colon]).ToLowerInvariant();
        string arg = colon < 0 ? "" : term[(colon + 1)..];
        switch (name)
        {
            case "full":
                return null;
            case "causal":
                if (arg.Length != 0) throw Bad(term, "causal takes no value");
                return new CausalMask();
            case "window":
            {
                string[] parts = arg.Split(',');
                if (parts.Length != 2) throw Bad(term, "expected window:LEFT,RIGHT, e.g. window:1024,0");
                return new SlidingWindowMask(WindowSide(parts[0], term), WindowSide(parts[1], term));
            }
            case "prefix":
                return new PrefixLmMask(NonNegative(arg, term));
            case "blockcausal":
            {
                int c = NonNegative(arg, term);
                if (c < 1) throw Bad(term, "the chunk size must be ≥ 1");
                return new BlockCausalMask(c);
            }
            case "doc":
            {
                var offsets = arg.Split(',').Select(p => NonNegative(p, term)).ToArray();
                SeqOffsets docs;
                try { docs = new SeqOffsets(offsets); }
                catch (ArgumentException e) { throw Bad(term, e.Message.Replace($" (Parameter '{e.ParamName}')", "", StringComparison.Ordinal)); }
                if (docs.TotalTokens != keyLength)
                    throw Bad(term, $"the offsets end at {docs.TotalTokens} but the inputs have {keyLength} key tokens");
                return new DocumentMask(docs);
            }
            default:
                throw new ArgumentException($"unknown mask '{term}' (expected causal, window:L,R, prefix:N, doc:o0,o1,..., blockcausal:C or full; join with '+').", "mask");
        }
    }

    private static int? WindowSide(string text, string term) =>
        text.Trim().Equals("inf", StringComparison.OrdinalIgnoreCase) ? null : NonNegative(text, term);

    private static int NonNegative(string text, string term)
    {
        if (!int.TryParse(text.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int value))
            throw Bad(term, $"'{text}' is not a non-negative integer");
        return value;
    }

    private static ArgumentException Bad(string term, string why) => new($"bad mask term '{term}': {why}.", "mask");

    /// <summary>The intersection of two boxed masks, as one concrete <see cref="AndMask{TA, TB}"/> (boxed).</summary>
    public static IMaskMod Intersect(IMaskMod a, IMaskMod b)
    {
        var outer = new OuterVisitor(b);
        return a.Accept<OuterVisitor, IMaskMod>(ref outer);
    }

    private readonly struct OuterVisitor(IMaskMod b) : IMaskVisitor<IMaskMod>
    {
        public IMaskMod Visit<TA>(TA a) where TA : struct, IMaskMod<TA>
        {
            var inner = new InnerVisitor<TA>(a);
            return b.Accept<InnerVisitor<TA>, IMaskMod>(ref inner);
        }
    }

    private readonly struct InnerVisitor<TA>(TA a) : IMaskVisitor<IMaskMod> where TA : struct, IMaskMod<TA>
    {
        public IMaskMod Visit<TB>(TB b) where TB : struct, IMaskMod<TB> => new AndMask<TA, TB>(a, b);
    }
}
