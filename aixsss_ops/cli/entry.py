"""The console script ``aixsss-ops``: the fast path (cli/fast.py) when the command line is one of it, else the
Typer app."""

from __future__ import annotations

import sys


def run(argv: list[str] | None = None) -> None:
    from aixsss_ops.cli import fast

    args = list(sys.argv[1:] if argv is None else argv)
    code = fast.run(args)
    if code is not None:
        sys.exit(code)
    from aixsss_ops.cli.main import run as run_typer

    run_typer(args)
