using BenchmarkDotNet.Running;

// Micro-benchmarks of the CPU kernel building blocks. The end-to-end figures come from `attend bench`;
// these isolate one piece at a time when tuning:
//   dotnet run -c Release --project bench/Attend.Benchmarks -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
