"""Row locks a key rotation waits for: whether an error is a lock timeout, and which sessions hold the rows of the
provider-key table (or lock it whole), in one line for the error that names them."""

from __future__ import annotations

from aixsss_ops.keys.model import TABLE


def lock_error(e: BaseException) -> bool:
    """A statement that waited longer than lock_timeout for a lock."""
    from psycopg import errors

    return isinstance(e, errors.LockNotAvailable)


HOLDERS = f"""
WITH h AS (
    SELECT l.pid, 1 AS r, NULL AS mode FROM "{TABLE}" p JOIN pg_locks l
      ON l.locktype = 'transactionid' AND l.transactionid = p.xmax AND l.mode = 'ExclusiveLock' AND l.granted
     WHERE p.xmax::text <> '0'
    UNION ALL
    SELECT l.pid, 0, l.mode FROM pg_locks l
     WHERE l.locktype = 'relation' AND l.granted AND l.relation = to_regclass('"{TABLE}"')
       AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'))
SELECT a.pid, a.usename, a.application_name, a.state, a.xact_start, sum(h.r), string_agg(DISTINCT h.mode, ', ')
  FROM h JOIN pg_stat_activity a ON a.pid = h.pid
 WHERE a.pid <> pg_backend_pid() AND a.application_name IS DISTINCT FROM %s
 GROUP BY 1, 2, 3, 4, 5 ORDER BY a.xact_start NULLS LAST, a.pid"""


def describe_holders(rows: list[tuple]) -> str:
    """The sessions of ``HOLDERS`` in one line."""
    out = []
    for pid, user, app, state, since, nrows, modes in rows:
        what = [f"row locks on {nrows} profile(s)"] if nrows else []
        what += [f"{modes} on the table"] if modes else []
        out.append(f"session pid {pid} (user {user or '?'}, application_name {app or ''!r}"
                   + (f", {state}" if state else "") + (f" since {since.isoformat(timespec='seconds')}" if since else "")
                   + (f", holding {' and '.join(what)}" if what else "") + ")")
    return "; ".join(out)
