"""Prisma-style ``DATABASE_URL`` handling.

Prisma accepts ``?schema=public`` (and a few other parameters) that libpq rejects;
they are translated here (schema -> search_path) rather than passed on.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aixsss_ops.errors import UsageError
from aixsss_ops.output import mask_url

# Parameters Prisma understands but libpq does not.
_PRISMA_ONLY = {
    "schema",
    "connection_limit",
    "pool_timeout",
    "pgbouncer",
    "statement_cache_size",
    "socket_timeout",
    "sslaccept",
    "sslidentity",
    "sslpassword",
    "single_use_connections",
}


@dataclass(frozen=True)
class PgTarget:
    conninfo: str
    schema: str | None
    database: str
    host: str
    port: int
    masked: str

    def connect(self, *, timeout: float = 5.0, autocommit: bool = True, **kwargs):
        """A psycopg connection with the Prisma schema as search_path; a down server is one clear error."""
        import psycopg

        from aixsss_ops.errors import ServiceUnavailable

        options = f"-c search_path={self.schema}" if self.schema else None
        try:
            return psycopg.connect(
                self.conninfo,
                connect_timeout=max(1, int(timeout)),
                autocommit=autocommit,
                options=options,
                **kwargs,
            )
        except psycopg.OperationalError as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ServiceUnavailable(f"postgres at {self.masked} is unreachable: {reason}") from None

    def with_database(self, name: str) -> PgTarget:
        parts = urlsplit(self.conninfo)
        return parse_database_url(
            urlunsplit(parts._replace(path="/" + name))
            + (f"?schema={self.schema}" if self.schema and "?" not in self.conninfo else "")
        )


def parse_database_url(url: str) -> PgTarget:
    if not url:
        raise UsageError("DATABASE_URL is empty")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise UsageError(f"DATABASE_URL must start with postgresql:// (got {mask_url(url)})")
    params = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in params if k == "schema"), None)
    kept = [(k, v) for k, v in params if k not in _PRISMA_ONLY]
    conninfo = urlunsplit(parts._replace(query=urlencode(kept)))
    try:
        port = parts.port or 5432
    except ValueError:
        raise UsageError(f"DATABASE_URL has an invalid port: {mask_url(url)}") from None
    return PgTarget(
        conninfo=conninfo,
        schema=schema or None,
        database=parts.path.lstrip("/") or "postgres",
        host=parts.hostname or "localhost",
        port=port,
        masked=mask_url(url),
    )
