"""Prisma-style ``DATABASE_URL`` handling.

Prisma accepts ``?schema=public`` (and a few other parameters) that libpq rejects;
they are translated here (schema -> search_path) rather than passed on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote_from_bytes, unquote_to_bytes, urlencode, urlsplit, urlunsplit

from aixsss_ops.errors import UsageError
from aixsss_ops.output import mask_url, scrubber, split_userinfo

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

# libpq parameters whose value is one of a few words: a wrong one is refused by libpq before any connection
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
}
# how libpq says it refused the connection string itself (no server was asked)
_LIBPQ_REFUSALS = re.compile(r"^(invalid .* value|invalid URI query parameter|invalid connection option)")


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
        except psycopg.ProgrammingError as e:  # psycopg's own parse of the connection string
            raise UsageError(f"the PostgreSQL URL {self.masked} is refused by libpq: {e}") from None
        except psycopg.OperationalError as e:
            from aixsss_ops.errors import driver_message

            reason = scrubber.scrub(driver_message(e))
            bare = reason.removeprefix("connection is bad: ")
            if _LIBPQ_REFUSALS.match(bare):
                raise UsageError(f"the PostgreSQL URL {self.masked} is refused by libpq: {bare}") from None
            raise ServiceUnavailable(f"postgres at {self.masked} is unreachable: {reason}") from None

    def with_database(self, name: str) -> PgTarget:
        parts = urlsplit(self.conninfo)
        return parse_database_url(
            urlunsplit(parts._replace(path="/" + name))
            + (f"?schema={self.schema}" if self.schema and "?" not in self.conninfo else "")
        )


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def encode_userinfo(url: str) -> str:
    """The URL with its user and password percent-encoded, so libpq (which stops at the first ``@``
    or ``/``) and redis-py read the password :func:`~aixsss_ops.output.split_userinfo` reads (up to the
    last ``@`` before the host)."""
    info = split_userinfo(url)
    if info is None:
        return url

    def enc(v: str) -> str:
        return quote_from_bytes(unquote_to_bytes(v), safe="")

    userinfo = enc(info.user) + (f":{enc(info.password)}" if info.password is not None else "")
    return f"{info.scheme}{userinfo}@{info.rest}"


def parse_database_url(url: str, name: str = "DATABASE_URL / --database-url") -> PgTarget:
    """A Prisma-style URL as libpq needs it. ``name`` (the variable or flag the URL came from) is what
    errors name; a bad URL is a UsageError (exit 2) that never shows the password or a non-URL value."""
    if not url:
        raise UsageError(f"{name} is empty")
    scrubber.add_url(url)
    if "://" not in url:
        raise UsageError(f"{name} must start with postgresql:// (got (value))",
                         hint="e.g. postgresql://user:****@host:5432/aixsss?schema=public")
    if _BAD_ESCAPE.search(url):
        raise UsageError(f"{name} has an invalid percent-escape ('%' not followed by two hex digits)",
                         hint="write a literal % in a password as %25")
    url = encode_userinfo(url)
    scrubber.add_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as e:  # the reason of an unparseable netloc can quote it: name only the IPv6 one
        reason = "invalid IPv6 host" if "IPv6" in str(e) else "cannot be parsed"
        raise UsageError(f"{name} is not a valid URL ({reason}): {mask_url(url)}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        got = f"{parts.scheme}://..." if parts.scheme else "(value)"
        raise UsageError(f"{name} must start with postgresql:// (got {got})")
    params = parse_qsl(parts.query, keep_blank_values=True)
    for k, v in params:
        if k in _CHOICES and v not in _CHOICES[k]:
            raise UsageError(f"{name} has an invalid {k}: {v!r} (one of {', '.join(_CHOICES[k])}): {mask_url(url)}")
    schema = next((v for k, v in params if k == "schema"), None)
    kept = [(k, v) for k, v in params if k not in _PRISMA_ONLY]
    conninfo = urlunsplit(parts._replace(query=urlencode(kept)))
    try:
        port = parts.port or 5432
    except ValueError:
        raise UsageError(f"{name} has an invalid port: {mask_url(url)}") from None
    return PgTarget(
        conninfo=conninfo,
        schema=schema or None,
        database=parts.path.lstrip("/") or "postgres",
        host=parts.hostname or "localhost",
        port=port,
        masked=mask_url(url),
    )
