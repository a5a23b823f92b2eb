"""The backup manifest: what a backup holds and how to prove it intact.

``manifest.json`` is written last, atomically, and the backup directory is renamed from ``<id>.partial`` to
``<id>`` only after that: a directory without a valid manifest is never a backup.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aixsss_ops.errors import CheckFailed

FORMAT = 1
MANIFEST = "manifest.json"
META = "meta.json"  # mutable sidecar (keep flag, last verification); not covered by the checksums
DB_DIR = "db"
GLOBALS = "globals.sql"
OBJECTS = "objects.json"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_id(at: datetime) -> str:
    """``20250102T030405Z-ab12``: UTC time plus a random suffix (ordering always uses the manifest's time)."""
    return at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def sha256_file(path: Path, bufsize: int = 1 << 20) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def load(path: Path) -> dict[str, Any]:
    """A manifest, validated enough to trust its shape; CheckFailed names the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckFailed(f"{path}: manifest missing (incomplete backup)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckFailed(f"{path}: manifest is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckFailed(f"{path}: unknown manifest format {data.get('format') if isinstance(data, dict) else '?'}")
    for key in ("id", "created_at", "files", "database"):
        if key not in data:
            raise CheckFailed(f"{path}: manifest lacks '{key}'")
    return data
