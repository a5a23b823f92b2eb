"""Scratch databases: the copy a restore loads before it is swapped in (``<db>_restoring_<hex>``) and the one
``backup verify --restore`` loads and drops (``aixsss_verify_<hex>``).

Each is held by its owner, for its whole life, with a session advisory lock taken before the database is created:
the server releases it when the owner's connection ends, SIGKILL included. A scratch database whose lock is free
has no owner any more; the next restore, verify, ``backup prune`` and ``backup cleanup`` drop such orphans, and
``doctor`` names any that are left.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from aixsss_ops.backup import postgres as pgb
from aixsss_ops.dburl import PgTarget

LOCK_CLASS = 0x41495853  # the first key of the two-key advisory lock ("AIXS"); the second is hashtext(name)
PATTERNS = (re.compile(r"^aixsss_verify_[0-9a-f]{12}$"), re.compile(r"^.+_restoring_[0-9a-f]{6}$"))


def is_scratch(name: str) -> bool:
    return any(p.match(name) for p in PATTERNS)


@contextmanager
def held(admin: PgTarget, name: str) -> Iterator[None]:
    """Own the scratch database ``name`` (take the lock before creating it)."""
    conn = admin.connect(timeout=10, autocommit=True)
    try:
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, name))
        yield
    finally:
        conn.close()


def orphans(admin: PgTarget) -> list[str]:
    """Scratch databases whose owner is gone (their lock is free), among those the connecting role owns (directly
    or through a role it belongs to; all of them for a superuser): on a shared server, other roles' are theirs."""
    out = []
    with admin.connect(timeout=10, autocommit=True) as c:
        for (name,) in c.execute("SELECT datname FROM pg_database WHERE pg_has_role(datdba, 'MEMBER') "
                                 "ORDER BY datname").fetchall():
            if is_scratch(name) and c.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                              (LOCK_CLASS, name)).fetchone()[0]:
                c.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, name))
                out.append(name)
    return out


def drop_orphans(admin: PgTarget) -> list[str]:
    """Drop the scratch databases whose owner is gone, each while holding its lock (no owner can appear meanwhile)."""
    dropped = []
    for name in orphans(admin):
        with admin.connect(timeout=10, autocommit=True) as c:
            if not c.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, name)).fetchone()[0]:
                continue
            pgb.drop_database(admin, name)
            dropped.append(name)
    return dropped
