using System.CommandLine;
using System.Text.Json;
using Attend.Methods;
using Spectre.Console;

namespace Attend.Cli;

/// <summary><c>attend methods [--json]</c>: prints <see cref="MethodCatalog.All"/> as a table or as a JSON array.</summary>
internal static class MethodsCommand
{
    public static Command Create(TextWriter output)
    {
        var json = new Option<bool>("--json") { Description = "Print a JSON array of {name, family, kind, paper, backends, status, summary, parameters}." };
        var command = new Command("methods", "List every attention method and kernel variant.") { json };
        command.SetAction(parse => Execute(parse.GetValue(json), output));
        return command;
    }

    internal static int Execute(bool json, TextWriter output)
    {
        IReadOnlyList<MethodInfo> methods = MethodCatalog.All;
        if (json)
        {
            var rows = methods.Select(m => new Dictionary<string, object>
            {
                ["name"] = m.Name, ["family"] = m.Family, ["kind"] = m.Kind, ["paper"] = m.Paper,
                ["backends"] = m.Backends, ["status"] = m.Status, ["summary"] = m.Summary,
                ["parameters"] = m.Parameters.Select(p => new Dictionary<string, string>
                {
                    ["name"] = p.Name, ["type"] = p.Type, ["default"] = p.Default, ["description"] = p.Description,
                }).ToArray(),
            });
            output.WriteLine(JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
            return 0;
        }
        IAnsiConsole console = Terminal.For(output);
        var table = new Table().AddColumns("name", "family", "kind", "backends", "status", "paper / summary");
        foreach (MethodInfo m in methods)
        {
            string detail = m.Paper.Length == 0 ? m.Summary : $"{m.Paper}\n{m.Summary}";
            if (m.Parameters.Count > 0) detail += $"\nparameters: {string.Join(", ", m.Parameters)}";
            table.AddRow(Markup.Escape(m.Name), m.Family, m.Kind, string.Join(",", m.Backends), Markup.Escape(m.Status), Markup.Escape(detail));
        }
        console.Write(table);
        return 0;
    }
}
