"""`medseg` subcommands: argument parsing and printing only; the work happens in the core."""
