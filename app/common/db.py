"""Postgres access for the bundled services: one short-lived async connection per unit of work."""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime

import psycopg
from psycopg.rows import dict_row

from aixsss_ops.dburl import PgTarget
from aixsss_ops.errors import ServiceUnavailable

_BASE36 = string.digits + string.ascii_lowercase


def new_id() -> str:
    """A cuid-shaped row id: ``c`` and 24 random base36 characters."""
    return "c" + "".join(secrets.choice(_BASE36) for _ in range(24))


def utcnow() -> datetime:
    """Now, as Prisma stores ``TIMESTAMP(3)``: UTC without a zone, millisecond precision."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


async def connect(target: PgTarget, *, timeout: float = 5) -> psycopg.AsyncConnection:
    options = f"-c search_path={target.schema}" if target.schema else None
    try:
        return await psycopg.AsyncConnection.connect(
            target.conninfo, connect_timeout=max(1, int(timeout)), autocommit=True, options=options,
            row_factory=dict_row,
        )
    except psycopg.OperationalError:
        raise ServiceUnavailable(f"postgres at {target.masked} is unreachable") from None


async def fetch_one(conn: psycopg.AsyncConnection, query: str, params=()) -> dict | None:
    return await (await conn.execute(query, params)).fetchone()
