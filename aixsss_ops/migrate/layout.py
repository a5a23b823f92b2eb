"""The Prisma Migrate folder layout: ``<dir>/<name>/migration.sql`` plus ``migration_lock.toml``.

Checksums are what Prisma stores in ``_prisma_migrations.checksum``: the SHA-256 hex of the
script, compared tolerant of CRLF/LF differences exactly as Prisma's schema engine does
(``schema-connector/src/checksum.rs``: the script as is, with CRLF -> LF, and with LF -> CRLF;
old ledgers may hold checksums whose bytes were not zero-padded).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from aixsss_ops.errors import UsageError

SCRIPT = "migration.sql"
LOCKFILE = "migration_lock.toml"
MAX_NAME = 255  # _prisma_migrations.migration_name is VARCHAR(255)
CHECKSUM_LEN = 64


class LayoutError(UsageError):
    """The migrations folder cannot be used as it is (exit 2); nothing has been applied."""


def checksum(script: bytes) -> str:
    """Prisma's checksum: SHA-256 of the script bytes, lowercase hex, zero-padded (64 chars)."""
    return hashlib.sha256(script).hexdigest()


def _checksum_old(digest: bytes) -> str:
    # the pre-2021 engine formatted each byte with {:x} (no zero padding), prisma-engines#1887
    return "".join(f"{b:x}" for b in digest)


def matches_checksum(script: bytes, recorded: str) -> bool:
    """Whether ``script`` matches a checksum recorded in the ledger, ignoring CRLF/LF differences."""
    variants = (script, script.replace(b"\r\n", b"\n"), script.replace(b"\n", b"\r\n"))
    old_format = bool(recorded) and len(recorded) != CHECKSUM_LEN
    for v in variants:
        digest = hashlib.sha256(v).digest()
        if (_checksum_old(digest) if old_format else digest.hex()) == recorded:
            return True
    return False


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path
    script: bytes = field(repr=False)

    @property
    def checksum(self) -> str:
        return checksum(self.script)

    @property
    def sql(self) -> str:
        return self.script.decode("utf-8")

    def matches(self, recorded: str) -> bool:
        return matches_checksum(self.script, recorded)


@dataclass(frozen=True)
class Layout:
    directory: Path
    migrations: list[Migration]
    provider: str | None  # from migration_lock.toml; None when the file is absent

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.migrations]

    def get(self, name: str) -> Migration | None:
        return next((m for m in self.migrations if m.name == name), None)


def read_provider(directory: Path) -> str | None:
    lock = directory / LOCKFILE
    if not lock.exists():
        return None
    try:
        data = tomllib.loads(lock.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise LayoutError(f"{lock}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise LayoutError(f"{lock}: malformed TOML: {e}") from None
    provider = data.get("provider")
    if not isinstance(provider, str):
        raise LayoutError(f"{lock}: no 'provider' key")
    return provider


def read_layout(directory: Path) -> Layout:
    """Every migration in lexical folder order, its script read and checked (raises LayoutError)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LayoutError(
            f"migrations folder {directory} does not exist",
            hint="pass --migrations-dir PATH (e.g. an AIXSSS checkout's apps/api/prisma/migrations)",
        )
    provider = read_provider(directory)
    if provider is not None and provider != "postgresql":
        raise LayoutError(
            f"{directory / LOCKFILE} says provider = \"{provider}\"; aixsss-ops migrates PostgreSQL only",
            hint="these migrations were written for another database; use the PostgreSQL migrations folder",
        )
    migrations: list[Migration] = []
    try:
        entries = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise LayoutError(f"{directory}: cannot list: {e.strerror}") from None
    for d in sorted(entries, key=lambda p: p.name):
        script_path = d / SCRIPT
        if len(d.name) > MAX_NAME:
            raise LayoutError(f"{d}: migration name is longer than {MAX_NAME} characters")
        if not script_path.is_file():
            raise LayoutError(
                f"{d}: no {SCRIPT} in this migration folder",
                hint=f"every folder under {directory} must hold a {SCRIPT}; remove the folder or add the script",
            )
        try:
            data = script_path.read_bytes()
        except OSError as e:
            raise LayoutError(f"{script_path}: cannot read: {e.strerror}") from None
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LayoutError(f"{script_path}: not valid UTF-8 (byte {e.start})") from None
        migrations.append(Migration(d.name, script_path, data))
    return Layout(directory, migrations, provider)
