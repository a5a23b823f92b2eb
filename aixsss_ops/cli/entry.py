"""The console script ``aixsss-ops``: the fast path (cli/fast.py) when the command line is one of it, else the
Typer app."""

from __future__ import annotations

import sys
from typing import NoReturn


def run(argv: list[str] | None = None) -> None:
    from aixsss_ops.cli import fast

    args = list(sys.argv[1:] if argv is None else argv)
    code = fast.run(args)
    if code is not None:
        end(code)
    from aixsss_ops.cli.main import run as run_typer

    run_typer(args)


def end(code: int) -> NoReturn:
    """End the process with ``code`` as the interpreter's own exit does (threads that are not daemons joined, atexit
    handlers run, output flushed) but without its teardown of every loaded module: ~0.1 s of a rollback's exit."""
    import atexit
    import contextlib
    import os
    import threading

    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said
            stream.flush()
    os._exit(code)
