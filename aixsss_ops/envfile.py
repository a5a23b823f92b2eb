"""Dotenv files (``KEY=value`` lines) as the services read them; written 0600 and atomically."""

from __future__ import annotations

import re
from pathlib import Path

from aixsss_ops.errors import UsageError
from aixsss_ops.fsutil import atomic_write

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def parse(text: str, source: str = "<env>") -> dict[str, str]:
    """Parse dotenv text; a malformed line is an error naming the file and line number (never its value)."""
    env: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise UsageError(f"{source}:{n}: not a KEY=value line")
        key, value = m.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            if m.group(2)[0] == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        env[key] = value
    return env


def read(path: Path) -> dict[str, str]:
    try:
        return parse(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise UsageError(f"env file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (at byte offset {e.start})") from None


def _quote(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./:@%+,=?-]*", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write(path: Path, env: dict[str, str], header: str | None = None) -> None:
    lines = [f"# {header}"] if header else []
    lines += [f"{k}={_quote(v)}" for k, v in env.items()]
    atomic_write(path, "\n".join(lines) + "\n", mode=0o600)
