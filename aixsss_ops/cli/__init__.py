"""The command line: the Typer sub-apps (one per noun), the root command group, and the fast path of the commands
an operator runs under pressure (cli/fast.py)."""
