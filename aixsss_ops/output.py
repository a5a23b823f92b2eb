"""The one place that renders results, masks secrets and maps errors to exit codes.

Domain code returns plain data; the CLI hands it here. With ``--json`` exactly one
JSON document goes to stdout; everything else (progress, logs, errors) goes to stderr.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "****"
_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|ENCRYPTION_KEY|API_KEY|ACCESS_KEY)", re.I)
_URL_WITH_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def mask_url(url: str) -> str:
    """A URL with its password replaced: ``redis://:****@host:6379``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_WITH_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{netloc}"))


def mask_value(name: str, value: Any) -> Any:
    """Mask ``value`` when ``name`` says it is a secret; strip passwords from URLs otherwise."""
    if value is None or value == "":
        return value
    if is_secret_name(name):
        return MASK
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def redact(data: Any, name: str = "") -> Any:
    """A deep copy of ``data`` with every secret masked (by key name, and URL passwords)."""
    if isinstance(data, Mapping):
        return {k: redact(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact(v, name) for v in data]
    return mask_value(name, data)


class SecretScrubber:
    """Removes known secret values from any text before it is shown."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, *values: str | None) -> None:
        for v in values:
            if v and len(v) >= 6:
                self._secrets.add(v)

    def scrub(self, text: str) -> str:
        for s in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(s, MASK)
        return _URL_WITH_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


scrubber = SecretScrubber()


@dataclass
class Output:
    json_mode: bool = False
    quiet: bool = False
    verbose: bool = False
    _console: Any = field(default=None, repr=False)
    _err: Any = field(default=None, repr=False)

    @property
    def plain(self) -> bool:
        return bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty()

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(no_color=self.plain, highlight=False, soft_wrap=True)
        return self._console

    @property
    def err(self):
        if self._err is None:
            from rich.console import Console

            self._err = Console(
                stderr=True,
                no_color=bool(os.environ.get("NO_COLOR")) or not sys.stderr.isatty(),
                highlight=False,
                soft_wrap=True,
            )
        return self._err

    def emit(self, data: Any, human: Callable[[Any], None] | None = None) -> None:
        """Print a command's result: JSON on stdout in --json mode, else the human renderer."""
        if self.json_mode:
            sys.stdout.write(scrubber.scrub(json.dumps(redact(data), indent=2, default=str)) + "\n")
            sys.stdout.flush()
        elif human is not None:
            human(data)
        else:
            self.console.print(scrubber.scrub(json.dumps(redact(data), indent=2, default=str)))

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(scrubber.scrub(message), markup=False)

    def warn(self, message: str) -> None:
        self.err.print(scrubber.scrub(f"warning: {message}"), markup=False, style="yellow")

    def error(self, message: str, hint: str | None = None) -> None:
        self.err.print(scrubber.scrub(f"error: {message}"), markup=False, style="bold red")
        if hint:
            self.err.print(scrubber.scrub(f"hint: {hint}"), markup=False)

    def table(self, title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
        from rich.table import Table

        t = Table(title=title, show_lines=False)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*(scrubber.scrub("" if v is None else str(v)) for v in r))
        self.console.print(t)

    def progress(self):
        """A rich progress bar on stderr (transient, disabled when not a TTY or in --json/quiet)."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
            disable=self.json_mode or self.quiet or not sys.stderr.isatty(),
        )
