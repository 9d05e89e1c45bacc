return Attend.Cli.AttendApp.Run(args, Console.Out, Console.Error);
