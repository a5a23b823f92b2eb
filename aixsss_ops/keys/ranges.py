"""Reading ``"AIProfile"``: the id-range bounds, the rows of a range (or of given ids) as COPY text, the count of the
row versions a pass wrote, and one range read and handed to the pool's per-value work, as a pool worker does it on
its own connection."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from aixsss_ops.dburl import PgTarget
from aixsss_ops.keys.model import COLUMNS, SELECT, TABLE, Chunk, ScanResult
from aixsss_ops.keys.pool import classify_chunk


def read_bounds(conn, batch: int) -> Iterator[str]:
    """The id starting each range of ``batch`` rows after the first, in id order, in ``conn``'s transaction. A cursor
    hands out each bound as soon as the index scan reaches it, so the first ranges can start early."""
    with conn.cursor(name="aixsss_keys_bounds") as cur:
        cur.itersize = 1
        cur.execute(f'SELECT "id" FROM (SELECT "id", row_number() OVER (ORDER BY "id") AS n FROM "{TABLE}") s '
                    'WHERE n %% %s = 1 AND n > 1', (batch,))
        for (hi,) in cur:
            yield hi


def range_cond(lo: str | None, hi: str | None):
    """lo <= id < hi, either end open when None."""
    from psycopg import sql

    cond = [sql.SQL("TRUE")]
    if lo is not None:
        cond.append(sql.SQL('"id" >= {}').format(sql.Literal(lo)))
    if hi is not None:
        cond.append(sql.SQL('"id" < {}').format(sql.Literal(hi)))
    return sql.SQL(" AND ").join(cond)


def copy_out(conn, *, lo: str | None = None, hi: str | None = None, ids: Sequence[str] | None = None,
             xmin: bool = False, not_written_by: Sequence[str] = ()):
    """The rows (id, with ``xmin`` the row version's xmin, and the three columns, by id; those of ``ids``, or with
    lo <= id < hi; not those whose version a transaction of ``not_written_by`` wrote), one COPY text line each, as
    the server sends them."""
    from psycopg import sql

    cond = [range_cond(lo, hi)]
    if not_written_by:
        cond.append(sql.SQL("NOT (xmin = ANY({}::text[]::xid[]))").format(sql.Literal(list(not_written_by))))
    if ids is not None:
        cond.append(sql.SQL('"id" = ANY({})').format(sql.Literal(list(ids))))
    q = sql.SQL('COPY (SELECT "id", {}{} FROM {} WHERE {} ORDER BY "id") TO STDOUT').format(
        sql.SQL("xmin, " if xmin else ""), sql.SQL(SELECT), sql.Identifier(TABLE), sql.SQL(" AND ").join(cond))
    with conn.cursor() as cur, cur.copy(q) as cp:
        yield from cp  # libpq hands out one data row per read


def count_written(conn, xids: Sequence[str]) -> tuple[int, int, int]:
    """(rows, their non-NULL values, other rows): the row versions the transactions ``xids`` wrote, and all the others,
    in ``conn``'s snapshot; one sequential scan."""
    from psycopg import sql

    return conn.execute(sql.SQL(
        "SELECT count(*) FILTER (WHERE w), coalesce(sum(num_nonnulls({})) FILTER (WHERE w), 0), "
        "count(*) FILTER (WHERE NOT w) FROM (SELECT xmin = ANY({}::text[]::xid[]) AS w, {} FROM {}) s").format(
        sql.SQL(SELECT), sql.Literal(list(xids)), sql.SQL(SELECT), sql.Identifier(TABLE))).fetchone()


def groups(rows, size: int):
    """Lists of up to ``size`` COPY lines."""
    buf: list = []
    for row in rows:
        buf.append(row)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


_WORKER_CONN: dict = {}  # a pool worker's connection per database, kept for the worker's life


def read_range(target: PgTarget, snapshot: str | None, index: int, lo: str | None, hi: str | None,
               order: Sequence[int], nkeys: int, reseal: tuple[int, int] | None, verify: bool,
               written_by: str | None) -> Chunk:
    """One id range read by a pool worker on its own connection (in the exported ``snapshot`` when given), then
    ``pool.classify_chunk``. ``written_by``: the xid of the batch transaction that wrote the range's new values, every
    one opened with ``order[0]`` before it was written. A row version whose xmin is that xid is one that transaction
    wrote, and its only write was that compare-and-set UPDATE (any later change makes a version with another xmin):
    such rows are counted by the server, and only the others are read and decrypted."""
    from psycopg import sql

    conn = _WORKER_CONN.get(target.conninfo)
    if conn is None or conn.closed:
        conn = _WORKER_CONN[target.conninfo] = target.connect(autocommit=True, timeout=10)
    with conn.transaction():
        if snapshot is not None:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        known = None
        if written_by is not None:
            known = conn.execute(sql.SQL(
                "SELECT count(*), coalesce(sum(num_nonnulls({})), 0) FROM {} WHERE {} AND xmin = {}::xid").format(
                sql.SQL(SELECT), sql.Identifier(TABLE), range_cond(lo, hi), sql.Literal(written_by))).fetchone()
        data = b"".join(copy_out(conn, lo=lo, hi=hi, xmin=reseal is not None,
                                 not_written_by=() if written_by is None else (written_by,)))
    c = classify_chunk(data, order, nkeys, reseal, verify)
    c.index = index
    if known is not None:
        rows, values = known
        c.scan.merge(ScanResult(rows=rows, values=values, nulls=len(COLUMNS) * rows - values,
                                by_key=[values if k == order[0] else 0 for k in range(nkeys)]))
    if c.last_id is None and data:
        c.last_id = data[:data.index(b"\t")].decode("utf-8", "surrogateescape")
    return c
