"""Exceptions the domain raises; the CLI maps each to an exit code (see README)."""


class OpsError(Exception):
    """An operation failed (exit 1). The message is shown as one line, already masked."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details


class UsageError(OpsError):
    """Bad input or configuration (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file or an override is invalid (exit 2)."""


class CheckFailed(OpsError):
    """A check or precondition failed: findings, invalid env, drift (exit 3)."""

    exit_code = 3


class ServiceUnavailable(OpsError):
    """A dependency (Postgres, Redis, S3, nginx, Docker) could not be reached (exit 1)."""


class MissingBinary(UsageError):
    """A system program is missing; the message names the Debian package that provides it."""

    def __init__(self, program: str, package: str):
        super().__init__(
            f"'{program}' was not found on PATH",
            hint=f"install it with: apt-get install -y {package}",
        )
        self.program = program
        self.package = package


def driver_message(e: BaseException) -> str:
    """A client library's whole error message on one line, nothing dropped: libpq writes one line per host it
    tried, each followed by an indented hint ("Is the server running…"), which is put in parentheses after it.
    The exception's type when the message is empty. Masking is the caller's (the message can quote a URL)."""
    parts: list[str] = []
    for raw in str(e).splitlines():
        text = " ".join(raw.split())
        if not text:
            continue
        if raw[:1].isspace() and parts:
            parts[-1] += f" ({text})"
        elif parts and parts[-1].endswith(":"):
            parts[-1] += f" {text}"
        else:
            parts.append(text)
    return "; ".join(parts) or type(e).__name__
