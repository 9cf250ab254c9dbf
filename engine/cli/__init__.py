"""The command line: argument types and one module per command group."""
