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
from urllib.parse import unquote, urlsplit

MASK = "****"
_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|ENCRYPTION_KEY|API_KEY|ACCESS_KEY)", re.I)
_URL_START = re.compile(r"[a-z][a-z0-9+.-]*://", re.I)
_WHITESPACE = re.compile(r"\s")
_PLAIN_HOSTPORT = re.compile(r"(\[[0-9A-Fa-f:.]*\]|[^:@\[\]\s]*)(:\d*)?")
# An API key by its shape (OpenAI, Anthropic, Stripe secret keys: ``sk-…``), wherever it appears in a text.
_API_KEY = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}")
# A password with spaces in free text: from ``user:`` to the last ``@`` (before a host) on the line.
_SPACED_USERINFO = re.compile(r"(?P<user>[^:/@\s]*):(?P<pw>[^\n]*\s[^\n]*)@(?=[\w\[])")


@dataclass(frozen=True)
class UserInfo:
    scheme: str  # "postgresql://"
    user: str
    password: str | None
    rest: str  # the host and everything after it


def split_userinfo(url: str) -> UserInfo | None:
    """The credentials of a URL, also when ``urlsplit`` cannot parse it; None when it has none.

    The password runs from the first ``:`` of the userinfo to the LAST ``@`` before the host, so a
    password holding ``@``, ``/`` or spaces (written unencoded) is still all of it.
    """
    m = _URL_START.match(url)
    if not m:
        return None
    body = url[m.end():]
    last = body.rfind("@")
    if last < 0:
        return None
    std_end = next((i for i, c in enumerate(body) if c in "/?#"), len(body))
    netloc = body[:std_end]
    if last < std_end:
        at = last
    elif "@" in netloc:  # another "@" after the netloc: in the password, unless it is in the query
        between = body[std_end:last]
        at = last if "?" not in between and "#" not in between else netloc.rindex("@")
    elif _PLAIN_HOSTPORT.fullmatch(netloc):
        return None  # an "@" in the path or query of a URL without credentials
    else:
        at = last  # the netloc ended early at a "/", "?" or "#" of the password
    user, sep, pw = body[:at].partition(":")
    return UserInfo(m.group(0), user, pw if sep else None, body[at + 1:])


def _parses_as_url(value: str) -> bool:
    if "://" not in value:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return False
    return bool(parts.scheme and parts.hostname)


def _scrub_urls(text: str) -> str:
    """Mask the password of every URL in ``text`` (see :func:`split_userinfo`)."""
    out: list[str] = []
    pos = 0
    starts = list(_URL_START.finditer(text))
    for i, m in enumerate(starts):
        if m.start() < pos:
            continue
        line_end = text.find("\n", m.end())
        line_end = len(text) if line_end < 0 else line_end
        nxt = starts[i + 1].start() if i + 1 < len(starts) else len(text)  # finditer: in order, no overlap
        ws = _WHITESPACE.search(text, m.end(), line_end)
        tok_end = ws.start() if ws else line_end
        info = split_userinfo(text[m.start():tok_end])
        if info is not None and info.password is not None:
            out += [text[pos:m.start()], f"{info.scheme}{info.user}:{MASK}@{info.rest}"]
            pos = tok_end
            continue
        if "@" in text[m.start():tok_end]:
            continue
        end = min(line_end, nxt)
        sp = _SPACED_USERINFO.match(text, m.end(), end) if text.find("@", tok_end, end) >= 0 else None
        if sp and not re.match(r"\d+(\s|/|$)", sp["pw"]):
            out += [text[pos:m.start()], f"{m.group(0)}{sp['user']}:{MASK}@"]
            pos = sp.end()
    out.append(text[pos:])
    return "".join(out)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def mask_url(url: str) -> str:
    """A URL with its password replaced: ``redis://:****@host:6379`` (also for one ``urlsplit`` rejects)."""
    info = split_userinfo(url)
    if info is None or info.password is None:
        return url
    return f"{info.scheme}{info.user}:{MASK}@{info.rest}"


def url_password(url: str) -> str | None:
    """The password of a URL as written (not percent-decoded), also for one ``urlsplit`` rejects."""
    info = split_userinfo(url)
    return info.password if info is not None else None


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


def secret_values(envs: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Every secret-looking value (by name, and URL passwords): the CLI hands them to the output scrubber."""
    out = []
    for env in envs.values():
        for k, v in env.items():
            if not v:
                continue
            if is_secret_name(k):
                out.append(v)
            elif "://" in v:
                pw = url_password(v)  # also of a URL urlsplit rejects, and one whose password holds "@"
                if pw:
                    out += [pw, unquote(pw)]
    return out


class SecretScrubber:
    """Removes known secret values from any text before it is shown."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, *values: str | None) -> None:
        for v in values:
            if v and len(v) >= 6:
                self._secrets.add(v)

    def add_url(self, value: str | None) -> None:
        """Register what a URL setting carries: its password (as written and decoded) and the whole value
        when it is not a URL at all (a secret pasted into the wrong place) or is a broken URL with a password."""
        if not value:
            return
        pw = url_password(value)
        if pw:
            self.add(pw, unquote(pw))
        if not _URL_START.match(value) or (pw and not _parses_as_url(value)):
            self.add(value)

    def scrub(self, text: str) -> str:
        """``text`` with the known secrets, URL passwords and API-key-shaped strings masked."""
        for s in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(s, MASK)
        return _API_KEY.sub("sk-" + MASK, _scrub_urls(text))


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

            self._console = Console(no_color=self.plain, highlight=False, soft_wrap=True, emoji=False)
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
                emoji=False,
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
        """A progress line on stderr, as it is (no markup, no styling: rich is not even loaded for it)."""
        if not self.quiet:
            sys.stderr.write(scrubber.scrub(message) + "\n")
            sys.stderr.flush()

    def warn(self, message: str) -> None:
        self.err.print(scrubber.scrub(f"warning: {message}"), markup=False, style="yellow")

    def error(self, message: str, hint: str | None = None) -> None:
        self.err.print(scrubber.scrub(f"error: {message}"), markup=False, style="bold red")
        if hint:
            self.err.print(scrubber.scrub(f"hint: {hint}"), markup=False)

    def table(self, title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]], *,
              whole: Iterable[str] = ()) -> None:
        """A table; the columns named in ``whole`` (an id the user must copy) are never truncated or wrapped:
        they keep the width of their longest value and the other columns wrap or shrink instead (folding a long
        word rather than cutting it with an ellipsis: nothing shown is lost)."""
        from rich.markup import escape
        from rich.table import Table

        columns = list(columns)
        # a cell is text, never markup: ``[worker] ready`` is shown as written
        cells = [[escape(scrubber.scrub("" if v is None else str(v))) for v in r] for r in rows]
        keep = set(whole)
        t = Table(title=title, show_lines=False)
        for i, c in enumerate(columns):
            if c in keep:
                t.add_column(c, no_wrap=True, overflow="fold",
                             min_width=max([len(c), *(len(r[i]) for r in cells if i < len(r))]))
            else:
                t.add_column(c, overflow="fold")
        for r in cells:
            t.add_row(*r)
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
