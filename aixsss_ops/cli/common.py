"""What every sub-app shares: the global options, config loading, confirmations, error mapping."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer

from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.output import Output

if TYPE_CHECKING:
    from aixsss_ops.config import OpsConfig


@dataclass
class State:
    config_path: str | None = None
    yes: bool = False
    out: Output = field(default_factory=Output)
    _config: Any = None

    @property
    def config(self) -> OpsConfig:
        if self._config is None:
            from aixsss_ops.config import load_config

            self._config = load_config(self.config_path)
        return self._config


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


def handle_errors(fn):
    """Map domain exceptions to one masked line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = next((a for a in args if isinstance(a, typer.Context)), kwargs.get("ctx"))
        out = state(ctx).out if ctx is not None else Output()
        try:
            return fn(*args, **kwargs)
        except OpsError as e:
            if out.json_mode:
                out.emit({"ok": False, "error": e.message, "hint": e.hint, "exit_code": e.exit_code})
            out.error(e.message, e.hint)
            if e.details and not out.quiet:
                out.info(e.details)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            out.error("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # a bug, or a library error the domain did not translate
            if out.verbose:
                import traceback

                out.info(traceback.format_exc())
            out.error(f"internal error: {type(e).__name__}: {e}", "rerun with --verbose for the traceback")
            raise typer.Exit(1) from None

    return wrapper
