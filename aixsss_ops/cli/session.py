"""What one run of the CLI holds (the global options, then the configuration, the deployment and the output, each
made on first use) and how an error ends it: one masked line on stderr (one JSON document with --json) and the
documented exit code. Free of the command-line parser, so the fast path (cli/fast.py) shares it."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aixsss_ops.errors import OpsError, ServiceUnavailable

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


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the command stops as on Ctrl-C (the same cleanup), and ends with exit 143."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While a command runs, SIGTERM (a supervisor, ``kill``, a CI runner's cancel) interrupts it as Ctrl-C does:
    ``Terminated``, a KeyboardInterrupt, raised in the main thread. A command may install its own handler inside; the
    one found before is put back on the way out. A process forked from this one (before it sets its own handling)
    dies of SIGTERM as by default."""
    main = os.getpid()

    def handler(signum, _frame):
        if os.getpid() != main:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    try:
        before = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals are not this code's to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


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


# what PostgreSQL refused, by SQLSTATE: (what it means here, what to do)
_PG_REFUSALS = {
    "42501": ("the PostgreSQL role lacks a privilege this operation needs",
              "grant it (docs/external.md says what the role needs), or give a role that has it (--database-url)"),
    "25006": ("the PostgreSQL session is read-only (default_transaction_read_only, or a standby)",
              "point DATABASE_URL at the primary, with a role whose transactions may write"),
    "57014": ("PostgreSQL cancelled a statement (a statement_timeout of the role or database, or an administrator)",
              "lift the timeout for this role (`ALTER ROLE … RESET statement_timeout`) and rerun"),
    "55P03": ("PostgreSQL could not take a lock in time: another session holds it",
              "find the session in pg_locks / pg_stat_activity, let it finish, and rerun"),
}


def postgres_refusal(e: BaseException) -> OpsError | None:
    """One clear error (exit 1) for what PostgreSQL refused to do (privileges, read-only, a timeout), rather than
    "internal error" or "PostgreSQL failed"."""
    if not type(e).__module__.startswith("psycopg") or getattr(e, "sqlstate", None) not in _PG_REFUSALS:
        return None
    meaning, hint = _PG_REFUSALS[e.sqlstate]
    return OpsError(f"{meaning}: {' '.join(str(e).split())[:300]}", hint=hint)


def report_error(st: State, e: BaseException) -> int:
    """Print ``e`` as the command's end (masked; one JSON document with --json) and return the exit code: a domain
    error's own, 130 for an interrupt (143 for SIGTERM), 1 for a service that failed mid-operation or anything
    unexpected (the traceback with --verbose)."""
    out = st.out  # made after the global options are read
    if isinstance(e, KeyboardInterrupt):
        message, hint, code, details = "interrupted", None, 143 if isinstance(e, Terminated) else 130, None
    elif isinstance(e, OpsError):
        message, hint, code, details = e.message, e.hint, e.exit_code, e.details
    elif (dep := postgres_refusal(e) or dependency_failure(e)) is not None:
        message, hint, code, details = dep.message, dep.hint, dep.exit_code, None
    else:
        if out.verbose:
            import traceback

            out.info("".join(traceback.format_exception(e)))
        message, hint, code, details = (f"internal error: {type(e).__name__}: {e}",
                                        "rerun with --verbose for the traceback", 1, None)
    if out.json_mode:
        out.emit({"ok": False, "error": message, "hint": hint, "exit_code": code})
    out.error(message, hint)
    if details and not out.quiet:  # a tool's output, less the line the message already quotes
        details = "\n".join(ln for ln in details.splitlines() if ln.strip() and ln.strip() not in message)
        if details:
            out.info(details)
    return code
