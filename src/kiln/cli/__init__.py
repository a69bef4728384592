"""The command line: one module per command group; printing and progress only, no logic."""
