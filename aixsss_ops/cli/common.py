"""What every sub-app shares: the global options, the configuration and deployment context, confirmations, and
the mapping of errors to exit codes (applied once, around every command, by the root group)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

from aixsss_ops.errors import OpsError, ServiceUnavailable, UsageError

if TYPE_CHECKING:
    from aixsss_ops.config import OpsConfig
    from aixsss_ops.context.deployment import Deployment
    from aixsss_ops.output import Output


@dataclass
class State:
    config_path: str | None = None
    yes: bool = False
    json_mode: bool = False  # the global options, until the Output is made
    verbose: bool = False
    quiet: bool = False
    _out: Any = None
    _config: Any = None
    _deployment: Any = None

    @property
    def out(self) -> Output:
        """Made on first use (a command's ``--help`` never needs it), with the global options."""
        if self._out is None:
            from aixsss_ops.output import Output

            self._out = Output(json_mode=self.json_mode, quiet=self.quiet, verbose=self.verbose)
        return self._out

    @property
    def config(self) -> OpsConfig:
        if self._config is None:
            from aixsss_ops.config import load_config

            self._config = load_config(self.config_path)
        return self._config

    @property
    def deployment(self) -> Deployment:
        """The deployment this command operates, resolved once (a command's flags: ``deployment.with_flags``)."""
        if self._deployment is None:
            from aixsss_ops.context.deployment import Deployment

            self._deployment = Deployment(self.config)
        return self._deployment


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


# errors of the client libraries that mean the service itself failed or went away, by the module that raises them
_SERVICES = (
    ("psycopg", "PostgreSQL", ("OperationalError", "InterfaceError")),
    ("redis", "Redis", ("ConnectionError", "TimeoutError", "BusyLoadingError")),
    ("urllib3", "the S3 store", ("HTTPError",)),
    ("minio", "the S3 store", ("S3Error", "ServerError", "InvalidResponseError")),
    ("docker", "the Docker engine", ("APIError", "DockerException")),
)


def dependency_failure(e: BaseException) -> OpsError | None:
    """One clear error (exit 1) naming the service, for a client library's error that says the service failed or
    went away in the middle of an operation (Postgres shut down, Redis gone, the store answering 5xx)."""
    module = type(e).__module__.split(".")[0]
    names = {c.__name__ for c in type(e).__mro__}
    for prefix, service, kinds in _SERVICES:
        if module == prefix and names & set(kinds):
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            return ServiceUnavailable(
                f"{service} failed during the operation: {reason}",
                hint=f"check that {service} runs (`aixsss-ops doctor`, `aixsss-ops stack status`) and rerun; what the "
                     "interrupted run left behind is removed by the next run")
    return None


CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")  # typer's click


@contextlib.contextmanager
def errors_mapped(st: State) -> Iterator[None]:
    """Domain exceptions become one masked line on stderr (one JSON document with --json) and the documented exit
    code; anything else is an internal error (exit 1, the traceback with --verbose)."""
    try:
        yield
    except OpsError as e:
        out = st.out  # made after the global options are read
        if out.json_mode:
            out.emit({"ok": False, "error": e.message, "hint": e.hint, "exit_code": e.exit_code})
        out.error(e.message, e.hint)
        if e.details and not out.quiet:
            out.info(e.details)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        out = st.out
        if out.json_mode:
            out.emit({"ok": False, "error": "interrupted", "hint": None, "exit_code": 130})
        out.error("interrupted")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, SystemExit, CLICK_ERROR):  # usage errors: the command line parser's
        raise
    except Exception as e:  # a dependency that failed mid-operation, a bug, or a library error not translated
        out = st.out
        dep = dependency_failure(e)
        if dep is not None:
            if out.json_mode:
                out.emit({"ok": False, "error": dep.message, "hint": dep.hint, "exit_code": dep.exit_code})
            out.error(dep.message, dep.hint)
            raise typer.Exit(dep.exit_code) from None
        if out.verbose:
            import traceback

            out.info(traceback.format_exc())
        message, hint = f"internal error: {type(e).__name__}: {e}", "rerun with --verbose for the traceback"
        if out.json_mode:
            out.emit({"ok": False, "error": message, "hint": hint, "exit_code": 1})
        out.error(message, hint)
        raise typer.Exit(1) from None
