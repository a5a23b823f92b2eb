"""Where the migrate commands find DATABASE_URL: flag, then the process environment, then the api env file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aixsss_ops import envfile
from aixsss_ops.errors import UsageError


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an env file; empty when it does not exist (a malformed line is an error naming it)."""
    return envfile.read(path) if path.exists() else {}


def database_url(flag: str | None, environ: Mapping[str, str], env_file: Path | None) -> tuple[str, str]:
    """The URL and where it came from; UsageError (exit 2) when there is none."""
    if flag:
        return flag, "--database-url"
    if environ.get("DATABASE_URL"):
        return environ["DATABASE_URL"], "environment DATABASE_URL"
    if env_file is not None:
        url = read_env_file(env_file).get("DATABASE_URL")
        if url:
            return url, str(env_file)
    raise UsageError(
        "no DATABASE_URL: pass --database-url, set DATABASE_URL in the environment"
        + (f", or write it to {env_file}" if env_file is not None else ""),
        hint="e.g. postgresql://user:password@host:5432/aixsss?schema=public",
    )
