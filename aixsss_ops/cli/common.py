"""What every sub-app shares: the run's State (cli/session.py) found from the Typer context, confirmations, and
the mapping of errors to exit codes (applied once, around every command, by the root group)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

from aixsss_ops.cli.session import State, report_error, sigterm_interrupts
from aixsss_ops.errors import OpsError, UsageError

__all__ = ["CLICK_ERROR", "State", "confirm", "errors_mapped", "state"]


def state(ctx: typer.Context) -> State:
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


def confirm(st: State, question: str) -> None:
    """Destructive commands ask; without a TTY and without --yes they refuse (exit 2)."""
    if st.yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} — refusing without a terminal; pass --yes to confirm")
    if not typer.confirm(question, default=False, err=True):
        raise OpsError("aborted by the user")


CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")  # typer's click


@contextlib.contextmanager
def errors_mapped(st: State) -> Iterator[None]:
    """Domain exceptions become one masked line on stderr (one JSON document with --json) and the documented exit
    code (cli/session.py); anything else is an internal error (exit 1, the traceback with --verbose). The command
    line parser's own exits and usage errors pass through. SIGTERM interrupts the command as Ctrl-C does."""
    try:
        with sigterm_interrupts():
            yield
    except (typer.Exit, typer.Abort, SystemExit, CLICK_ERROR):
        raise
    except (Exception, KeyboardInterrupt) as e:
        raise typer.Exit(report_error(st, e)) from None
