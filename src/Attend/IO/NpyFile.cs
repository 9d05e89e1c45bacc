using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace Attend.IO;

/// <summary>
/// An array read from a NumPy <c>.npy</c> file: its shape (C order) and its elements, either float32 or float16.
/// </summary>
/// <param name="Shape">The dimensions, outermost first; empty for a scalar.</param>
/// <param name="ElementType"><see cref="Attend.ElementType.Float32"/> ('&lt;f4') or <see cref="Attend.ElementType.Float16"/> ('&lt;f2').</param>
/// <param name="Data">The elements in C order: a <c>float[]</c> or a <c>Half[]</c> according to <paramref name="ElementType"/>.</param>
public sealed record NpyArray(int[] Shape, ElementType ElementType, Array Data)
{
    /// <summary>Number of elements (the product of <see cref="Shape"/>).</summary>
    public long Length => Data.LongLength;

    /// <summary>The float32 elements.</summary>
    /// <exception cref="InvalidOperationException">The array holds float16.</exception>
    public float[] AsSingle() => Data as float[] ?? throw new InvalidOperationException($"The array holds {ElementType.ShortName()}, not f32.");

    /// <summary>The float16 elements.</summary>
    /// <exception cref="InvalidOperationException">The array holds float32.</exception>
    public Half[] AsHalf() => Data as Half[] ?? throw new InvalidOperationException($"The array holds {ElementType.ShortName()}, not f16.");
}

/// <summary>
/// Reads and writes NumPy <c>.npy</c> files (format versions 1.0, 2.0 and 3.0) holding little-endian float32
/// (<c>'&lt;f4'</c>) or float16 (<c>'&lt;f2'</c>) arrays in C order. Other element types, big-endian data and Fortran
/// order are refused with an exception that names the file and the problem.
/// </summary>
public static class NpyFile
{
    private static ReadOnlySpan<byte> Magic => [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    /// <summary>Reads an array from the file at <paramref name="path"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a supported <c>.npy</c> file; the message names the file and the problem.</exception>
    public static NpyArray Read(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: file not found.", path);
        using FileStream stream = File.OpenRead(path);
        return Read(stream, path);
    }

    /// <summary>Reads an array from <paramref name="stream"/>; <paramref name="name"/> names the source in error messages.</summary>
    /// <exception cref="InvalidDataException">The stream is not a supported <c>.npy</c> array.</exception>
    public static NpyArray Read(Stream stream, string name)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Span<byte> prefix = stackalloc byte[12];
        int got = ReadAtMost(stream, prefix[..8]);
        if (got < 8 || !prefix[..6].SequenceEqual(Magic))
            throw new InvalidDataException($"{name}: not a .npy file (bad magic; expected \\x93NUMPY).");
        byte major = prefix[6], minor = prefix[7];
        int headerLength;
        if (major == 1)
        {
            if (ReadAtMost(stream, prefix.Slice(8, 2)) < 2) throw Truncated(name, "header length");
            headerLength = BinaryPrimitives.ReadUInt16LittleEndian(prefix.Slice(8, 2));
        }
        else if (major is 2 or 3)
        {
            if (ReadAtMost(stream, prefix.Slice(8, 4)) < 4) throw Truncated(name, "header length");
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(prefix.Slice(8, 4));
            if (length > 1 << 24) throw new InvalidDataException($"{name}: header length {length} is implausibly large.");
            headerLength = (int)length;
        }
        else
        {
            throw new InvalidDataException($"{name}: unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0).");
        }

        var headerBytes = new byte[headerLength];
        if (ReadAtMost(stream, headerBytes) < headerLength) throw Truncated(name, "header");
        string header = (major == 3 ? Encoding.UTF8 : Encoding.Latin1).GetString(headerBytes);
        (string descr, bool fortran, int[] shape) = ParseHeader(header, name);

        ElementType type = descr switch
        {
            "<f4" => ElementType.Float32,
            "<f2" => ElementType.Float16,
            _ => throw new InvalidDataException($"{name}: unsupported dtype '{descr}' (supported: '<f4' float32 and '<f2' float16, little-endian)."),
        };
        if (fortran)
            throw new InvalidDataException($"{name}: Fortran-order arrays are not supported (save with numpy.ascontiguousarray first).");

        long count = 1;
        foreach (int d in shape) count = checked(count * d);
        if (count > Array.MaxLength)
            throw new InvalidDataException($"{name}: shape ({string.Join(", ", shape)}) holds {count} elements, more than an array can.");
        int itemSize = type == ElementType.Float32 ? 4 : 2;
        Array data = type == ElementType.Float32 ? new float[count] : new Half[count];
        Span<byte> bytes = type == ElementType.Float32
            ? MemoryMarshal.AsBytes(((float[])data).AsSpan())
            : MemoryMarshal.AsBytes(((Half[])data).AsSpan());
        int read = ReadAtMost(stream, bytes);
        if (read < bytes.Length)
            throw new InvalidDataException(
                $"{name}: truncated data: shape ({string.Join(", ", shape)}) of {descr} needs {count * itemSize} bytes, found {read}.");
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("Reading .npy files needs a little-endian machine.");
        return new NpyArray(shape, type, data);
    }

    /// <summary>Writes a float32 array of shape <paramref name="shape"/> (C order) to <paramref name="path"/>.</summary>
    /// <exception cref="ArgumentException">The shape has a negative dimension or does not hold <paramref name="data"/>'s length.</exception>
    public static void Write(string path, ReadOnlySpan<int> shape, ReadOnlySpan<float> data) =>
        Write(path, shape, "<f4", MemoryMarshal.AsBytes(data), data.Length);

    /// <summary>Writes a float16 array of shape <paramref name="shape"/> (C order) to <paramref name="path"/>.</summary>
    /// <exception cref="ArgumentException">The shape has a negative dimension or does not hold <paramref name="data"/>'s length.</exception>
    public static void Write(string path, ReadOnlySpan<int> shape, ReadOnlySpan<Half> data) =>
        Write(path, shape, "<f2", MemoryMarshal.AsBytes(data), data.Length);

    private static void Write(string path, ReadOnlySpan<int> shape, string descr, ReadOnlySpan<byte> bytes, int count)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        long product = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"{path}: shape ({string.Join(", ", shape.ToArray())}) has a negative dimension.", nameof(shape));
            product *= d;
        }
        if (product != count)
            throw new ArgumentException($"{path}: shape ({string.Join(", ", shape.ToArray())}) holds {product} elements but the data has {count}.", nameof(shape));
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("Writing .npy files needs a little-endian machine.");

        string shapeText = shape.Length == 1 ? $"({shape[0]},)" : "(" + string.Join(", ", shape.ToArray()) + ")";
        string dict = $"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shapeText}, }}";
        // Version 1.0 unless the header does not fit its 16-bit length; the preamble plus header is padded with
        // spaces to a multiple of 64 bytes and ends with a newline, as numpy writes it.
        bool v1 = dict.Length + 1 + 10 <= ushort.MaxValue;
        int preamble = v1 ? 10 : 12;
        int total = preamble + dict.Length + 1;
        int padded = (total + 63) / 64 * 64;
        string header = dict + new string(' ', padded - total) + "\n";

        using FileStream stream = File.Create(path);
        stream.Write(Magic);
        stream.WriteByte(v1 ? (byte)1 : (byte)2);
        stream.WriteByte(0);
        Span<byte> length = stackalloc byte[4];
        if (v1)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(length, (ushort)header.Length);
            stream.Write(length[..2]);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(length, (uint)header.Length);
            stream.Write(length);
        }
        stream.Write(Encoding.Latin1.GetBytes(header));
        stream.Write(bytes);
    }

    private static InvalidDataException Truncated(string name, string what) => new($"{name}: truncated file (ends inside the {what}).");

    private static int ReadAtMost(Stream stream, Span<byte> buffer)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = stream.Read(buffer[total..]);
            if (n == 0) break;
            total += n;
        }
        return total;
    }

    // Parses the Python dict literal of the header: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }.
    private static (string Descr, bool Fortran, int[] Shape) ParseHeader(string header, string name)
    {
        string? descr = null;
        bool? fortran = null;
        int[]? shape = null;
        string text = header.Trim();
        if (text.Length < 2 || text[0] != '{' || text[^1] != '}')
            throw new InvalidDataException($"{name}: malformed header (not a dict literal): {Clip(header)}");
        int i = 1;
        while (true)
        {
            SkipSpaceAndCommas(text, ref i);
            if (i >= text.Length - 1) break;
            string key = ReadQuoted(text, ref i, name);
            SkipSpace(text, ref i);
            if (i >= text.Length || text[i] != ':') throw new InvalidDataException($"{name}: malformed header (no ':' after '{key}'): {Clip(header)}");
            i++;
            SkipSpace(text, ref i);
            switch (key)
            {
                case "descr":
                    if (i < text.Length && text[i] is not ('\'' or '"'))
                        throw new InvalidDataException($"{name}: unsupported dtype (structured dtypes are not supported): {Clip(header)}");
                    descr = ReadQuoted(text, ref i, name);
                    break;
                case "fortran_order":
                    if (string.CompareOrdinal(text, i, "True", 0, 4) == 0) { fortran = true; i += 4; }
                    else if (string.CompareOrdinal(text, i, "False", 0, 5) == 0) { fortran = false; i += 5; }
                    else throw new InvalidDataException($"{name}: malformed header ('fortran_order' is not True or False): {Clip(header)}");
                    break;
                case "shape":
                    shape = ReadShape(text, ref i, name);
                    break;
                default:
                    throw new InvalidDataException($"{name}: malformed header (unknown key '{key}'): {Clip(header)}");
            }
        }
        if (descr is null || fortran is null || shape is null)
            throw new InvalidDataException($"{name}: malformed header (needs 'descr', 'fortran_order' and 'shape'): {Clip(header)}");
        return (descr, fortran.Value, shape);
    }

    private static int[] ReadShape(string text, ref int i, string name)
    {
        if (i >= text.Length || text[i] != '(') throw new InvalidDataException($"{name}: malformed header ('shape' is not a tuple).");
        int close = text.IndexOf(')', i);
        if (close < 0) throw new InvalidDataException($"{name}: malformed header ('shape' tuple is not closed).");
        string inner = text[(i + 1)..close];
        i = close + 1;
        var dims = new List<int>();
        foreach (string part in inner.Split(','))
        {
            string p = part.Trim();
            if (p.Length == 0) continue;
            if (p.EndsWith('L')) p = p[..^1];
            if (!int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int d))
                throw new InvalidDataException($"{name}: malformed header (shape entry '{part.Trim()}' is not a non-negative integer).");
            dims.Add(d);
        }
        return dims.ToArray();
    }

    private static string ReadQuoted(string text, ref int i, string name)
    {
        if (i >= text.Length || text[i] is not ('\'' or '"'))
            throw new InvalidDataException($"{name}: malformed header (expected a quoted string at offset {i}): {Clip(text)}");
        char quote = text[i];
        int end = text.IndexOf(quote, i + 1);
        if (end < 0) throw new InvalidDataException($"{name}: malformed header (unterminated string): {Clip(text)}");
        string value = text[(i + 1)..end];
        i = end + 1;
        return value;
    }

    private static void SkipSpace(string text, ref int i)
    {
        while (i < text.Length && char.IsWhiteSpace(text[i])) i++;
    }

    private static void SkipSpaceAndCommas(string text, ref int i)
    {
        while (i < text.Length && (char.IsWhiteSpace(text[i]) || text[i] == ',')) i++;
    }

    private static string Clip(string s) => s.Length <= 120 ? s.Trim() : s[..120] + "…";
}
