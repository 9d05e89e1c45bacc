using Xunit;
using System.Buffers.Binary;
using System.Text;
using Attend.IO;

namespace Attend.Tests.Cli;

public class NpyFileTests
{
    [Fact]
    public void Float32RoundTripKeepsShapeAndValues()
    {
        using var dir = new TempDir();
        float[] data = TestData.Gaussian<float>(TestData.Rng(1), 2 * 3 * 5);
        NpyFile.Write(dir.File("a.npy"), [2, 3, 5], data);
        NpyArray read = NpyFile.Read(dir.File("a.npy"));
        Assert.Equal([2, 3, 5], read.Shape);
        Assert.Equal(ElementType.Float32, read.ElementType);
        Assert.Equal(data, read.AsSingle());
    }

    [Fact]
    public void Float16RoundTripKeepsShapeAndValues()
    {
        using var dir = new TempDir();
        Half[] data = TestData.Gaussian<Half>(TestData.Rng(2), 7);
        NpyFile.Write(dir.File("h.npy"), [7], data);
        NpyArray read = NpyFile.Read(dir.File("h.npy"));
        Assert.Equal([7], read.Shape);
        Assert.Equal(ElementType.Float16, read.ElementType);
        Assert.Equal(data, read.AsHalf());
    }

    [Fact]
    public void WrittenHeaderIsNumpyFormat()
    {
        using var dir = new TempDir();
        NpyFile.Write(dir.File("a.npy"), [4], new float[4]);
        byte[] bytes = File.ReadAllBytes(dir.File("a.npy"));
        int headerLength = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(8));
        Assert.Equal(0, (10 + headerLength) % 64);
        string header = Encoding.ASCII.GetString(bytes, 10, headerLength);
        Assert.Contains("'descr': '<f4'", header);
        Assert.Contains("'shape': (4,)", header);
        Assert.EndsWith("\n", header);
        Assert.Equal(10 + headerLength + 16, bytes.Length);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void ReadsVersion2And3Headers(int major)
    {
        using var dir = new TempDir();
        string path = dir.File("v.npy");
        File.WriteAllBytes(path, Handmade(major, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", 16));
        NpyArray read = NpyFile.Read(path);
        Assert.Equal([2, 2], read.Shape);
        Assert.Equal(4, read.AsSingle().Length);
    }

    [Theory]
    [InlineData("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16, "'<f8'")]
    [InlineData("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8, "'>f4'")]
    [InlineData("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16, "Fortran")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", 20, "truncated")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (x,), }", 8, "shape")]
    public void BadFilesNameTheFileAndTheProblem(string header, int dataBytes, string problem)
    {
        using var dir = new TempDir();
        string path = dir.File("bad.npy");
        File.WriteAllBytes(path, Handmade(1, header, dataBytes));
        var e = Assert.Throws<InvalidDataException>(() => NpyFile.Read(path));
        Assert.Contains(path, e.Message);
        Assert.Contains(problem, e.Message);
    }

    [Fact]
    public void BadMagicIsReported()
    {
        using var dir = new TempDir();
        string path = dir.File("text.npy");
        File.WriteAllText(path, "hello, not numpy at all");
        var e = Assert.Throws<InvalidDataException>(() => NpyFile.Read(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("magic", e.Message);
    }

    [Fact]
    public void WritingWithAShapeThatDoesNotHoldTheDataThrows()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<ArgumentException>(() => NpyFile.Write(dir.File("s.npy"), [2, 3], new float[5]));
        Assert.Contains("holds 6 elements but the data has 5", e.Message);
    }

    private static byte[] Handmade(int major, string dict, int dataBytes)
    {
        int preamble = major == 1 ? 10 : 12;
        string header = dict.PadRight((preamble + dict.Length + 1 + 63) / 64 * 64 - preamble - 1) + "\n";
        var bytes = new List<byte>([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', (byte)major, 0]);
        var len = new byte[major == 1 ? 2 : 4];
        if (major == 1) BinaryPrimitives.WriteUInt16LittleEndian(len, (ushort)header.Length);
        else BinaryPrimitives.WriteUInt32LittleEndian(len, (uint)header.Length);
        bytes.AddRange(len);
        bytes.AddRange(Encoding.ASCII.GetBytes(header));
        for (int i = 0; i < dataBytes; i++) bytes.Add((byte)(i * 37));
        return bytes.ToArray();
    }
}
