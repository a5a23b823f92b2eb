"""The ``Engine``: whole-table scans and re-encryption passes over the provider keys stored in ``"AIProfile"``.

A small process pool does all the per-value work (``pool``; it would otherwise hold the GIL): for a whole-table pass
each worker reads id ranges itself with ``COPY … TO STDOUT`` on its own connection (``ranges``), in one snapshot the
main process exports, parses them, does the crypto and hands back ``COPY … FROM STDIN`` text for the writes. So the
main process only hands out ranges and writes batches, and the crypto overlaps the database work.

Re-encryption works in batches, each one transaction: ``COPY`` the batch's rows (id, the xmin of the row version
read, the new values) into a temp table, then one compare-and-set ``UPDATE … FROM`` that writes a row only where it
is still the version read. The UPDATE takes the row locks itself (no separate ``SELECT … FOR UPDATE`` round
trip); a row changed concurrently is simply not written by that batch, and the verification that follows finds
it and re-encrypts it in a later pass. A check that seals ahead can also write its batches ahead (``staging``): on
the writer connections, one open transaction each, committed by the pass that follows, rolled back if the check
fails. A value already decrypting with the target key is left alone (the GCM tag tells), which makes every pass
idempotent and resumable: a killed batch rolls back whole and the next run redoes it.

Every new value is opened again with the target key before it can be written: by the worker that sealed it (in the
tight loop for plain rows, the sealed bytes are opened, and the stored text of one value per chunk is parsed back
and opened; see ``pool.reseal_all``), or, for unusual rows a check sealed ahead, in the pool while the batches
before its own are written. The final scan lets the server count the rows whose version a batch of the pass wrote
(their xmin is that batch's xid, see ``Engine._scan_written``) and decrypts all the others. Nothing here ever returns
plaintext or keys: workers return ciphertext, counts and (row id, column, reason).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

from aixsss_ops.dburl import PgTarget
from aixsss_ops.keys.model import (
    COLUMNS,
    MAX_ERRORS,
    TABLE,
    BadValue,
    BadValues,
    Chunk,
    PassResult,
    ScanResult,
)
from aixsss_ops.keys.pool import classify_chunk, init_worker, verify_update
from aixsss_ops.keys.ranges import copy_out, count_written, groups, read_bounds, read_range
from aixsss_ops.keys.staging import Staging

BATCH = 2500
LOCK_TIMEOUT = 60.0  # seconds a write waits for a row lock held elsewhere before its batch fails
MEMO_ROWS = 250_000  # rows whose new values a check may keep for the rotation that follows (~100 MB at most)
SCAN_CHUNK = 5000
STRAY_ROWS = 10_000  # rows a verification reads in one COPY rather than range by range
WRITERS = 2  # connections writing batches at once
LOCK_KEY = 0x4B455953  # pg advisory lock: one rotation at a time per database ("KEYS")

_TMP = "_aixsss_keys_rotate"


def default_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _pass_result(c: Chunk, src: int, dst: int) -> PassResult:
    return PassResult(batches=1, rows=c.scan.rows, reencrypted=c.scan.by_key[src], already=c.scan.by_key[dst],
                      nulls=c.scan.nulls)


class Engine:
    """A process pool holding the keys (in that order) and the database target. Use as a context manager.

    Whole-table passes split the table into id ranges of ``batch`` rows (``bounds``, fixed for the engine's life)
    that pool workers read themselves, on their own connections, in a snapshot the engine exports; the main process
    only hands out ranges and writes batches."""

    def __init__(self, target: PgTarget, keys: Sequence[bytes], *, workers: int | None = None, batch: int = BATCH,
                 lock_timeout: float = LOCK_TIMEOUT, application_name: str | None = None):
        self.target = target
        self.lock_timeout = lock_timeout  # seconds a write waits for a row held elsewhere: the batch then fails
        self.application_name = application_name  # of the writer connections: who they are in pg_stat_activity
        self.nkeys = len(keys)
        self.bounds: list[str] | None = None  # range i is bounds[i-1] <= id < bounds[i]
        # ranges re-sealed during a check, in id order, for the next reencrypt(*memo_pair): ranges 0..len(memo)-1
        # (all of them when memo_full). Their writes compare-and-set, so rows changed since are left alone.
        self.memo: list[Chunk] = []
        self.memo_pair: tuple[int, int] | None = None
        self.memo_full = False
        # per range: the xid of the batch that wrote it, every value written being of key written_key
        self.written: dict[int, str] = {}
        self.written_key: int | None = None
        self.batch = batch
        self.workers = workers or default_workers()
        self._writers: Future | None = None  # writer connections a check opens ahead for the next reencrypt
        self._staging: Staging | None = None  # the memo's batches a check wrote ahead, uncommitted (scan's stage)
        import multiprocessing

        # fork before any database connection exists in this process; the children run crypto and read ranges
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                        initializer=init_worker, initargs=(list(keys), os.getpid()))
        # start the workers now (an idle pool otherwise forks lazily, after connections are open)
        for f in [self.pool.submit(os.getpid) for _ in range(self.workers)]:
            f.result()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.unstage()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for conn in self._take_writers():
            conn.close()

    def unstage(self) -> None:
        """Rolls back what a check wrote ahead (its row locks end); its connections go to the next reencrypt."""
        staging, self._staging = self._staging, None
        if staging is not None:
            staging.rollback()
            self._writers = Future()
            self._writers.set_result(staging.conns)

    def _take_writers(self) -> list:
        pre, self._writers = self._writers, None
        try:
            return pre.result() if pre is not None else []
        except Exception:  # noqa: BLE001 - reencrypt opens them itself and reports a failure then
            return []

    def table_exists(self, conn) -> bool:
        return conn.execute("SELECT to_regclass(%s)", (f'"{TABLE}"',)).fetchone()[0] is not None

    def _ranges(self, conn) -> Iterator[tuple[str | None, str | None]]:
        """(lo, hi) of every id range, in id order; the bounds are read once (``ranges.read_bounds``), in ``conn``'s
        transaction, and handed out as they come."""
        if self.bounds is None:
            bounds: list[str] = []
            lo = None
            for hi in read_bounds(conn, self.batch):
                bounds.append(hi)
                yield lo, hi
                lo = hi
            self.bounds = bounds
            yield lo, None
            return
        yield from zip([None, *self.bounds], [*self.bounds, None], strict=True)

    def _written(self, key: int) -> dict[int, str]:
        if self.written_key != key:
            self.written, self.written_key = {}, key
        return self.written

    # -- read-only scan --------------------------------------------------------------------------------
    def scan(self, order: Sequence[int], progress: Callable[[int], None] | None = None,
             ids: Iterable[str] | None = None, reseal: tuple[int, int] | None = None,
             stage: bool = False) -> ScanResult:
        """Whose key every stored value is, trying the keys in ``order``; one snapshot, no locks.

        With ``reseal=(src, dst)`` the crypto of the next ``reencrypt(src, dst)`` is done here too (up to
        MEMO_ROWS rows): it only writes what is unchanged by then, so a check that runs while nothing is written yet
        takes the crypto off the batches. With ``stage`` as well, the batches of that memo are also written while
        the scan goes on, uncommitted (``staging``): the next ``reencrypt(src, dst)`` commits them; a scan that finds
        values of neither key, or fails, rolls them back, and so does ``unstage``."""
        order = list(order)
        total = ScanResult(by_key=[0] * self.nkeys)
        self.unstage()
        self.memo, self.memo_pair, self.memo_full = [], None, False
        if reseal is not None:
            reseal = tuple(reseal)
            if self._writers is None:  # their set-up (a temp table each) overlaps the check
                from concurrent.futures import ThreadPoolExecutor

                tp = ThreadPoolExecutor(1, thread_name_prefix="keys-connect")
                self._writers = tp.submit(lambda: [self._conn() for _ in range(WRITERS)])
                tp.shutdown(wait=False)
        with self.target.connect(autocommit=False, timeout=10) as conn:
            if not self.table_exists(conn):
                self.memo_pair, self.memo_full = reseal, True
                return total
            conn.rollback()
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if ids is not None:
                self._scan_rows(copy_out(conn, ids=list(ids)), order, total, progress)
            elif reseal is not None or not self._scan_written(conn, order, total, progress):
                try:
                    self._scan_ranges(conn, order, reseal, total, progress, stage and reseal is not None)
                except BaseException:
                    self.unstage()
                    raise
            conn.rollback()
        if reseal is not None and not total.bad:
            self.memo_pair = reseal
        else:
            self.memo = []
            self.unstage()
        return total

    def _scan_rows(self, rows, order: list[int], total: ScanResult, progress: Callable[[int], None] | None) -> None:
        """The COPY lines ``rows`` (id and the three columns), classified in the pool in chunks of SCAN_CHUNK."""
        with contextlib.closing(rows):
            futures = [self.pool.submit(classify_chunk, b"".join(chunk), order, self.nkeys)
                       for chunk in groups(rows, SCAN_CHUNK)]
        for f in futures:
            c = f.result()
            total.merge(c.scan)
            if progress:
                progress(c.scan.rows)

    def _scan_written(self, conn, order: list[int], total: ScanResult,
                      progress: Callable[[int], None] | None) -> bool:
        """The whole-table scan after a pass into ``order[0]``: the server counts the row versions the pass's batches
        wrote (each holds only values opened with that key before its compare-and-set UPDATE wrote them; any later
        change makes a version with another xmin), in one sequential scan, and only the other rows are read and
        decrypted. False, having counted nothing, when the pass wrote nothing or left more than STRAY_ROWS rows
        unwritten (``_scan_ranges`` then reads them range by range, in parallel)."""
        xids = sorted(set(self.written.values())) if self.written_key == order[0] else []
        if not xids:
            return False
        rows, values, others = count_written(conn, xids)
        if others > STRAY_ROWS:
            return False
        total.merge(ScanResult(rows=rows, values=values, nulls=len(COLUMNS) * rows - values,
                               by_key=[values if k == order[0] else 0 for k in range(self.nkeys)]))
        if progress:
            progress(rows)
        if others:
            self._scan_rows(copy_out(conn, not_written_by=xids), order, total, progress)
        return True

    def _scan_ranges(self, conn, order: list[int], reseal: tuple[int, int] | None, total: ScanResult,
                     progress: Callable[[int], None] | None, stage: bool) -> None:
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        ranges = self._ranges(conn)
        written = self.written if self.written_key == order[0] and reseal is None else {}
        inflight: deque = deque()  # (future, re-sealed?) in id order
        memo_open = reseal is not None  # still re-sealing, and the memo covers every range read so far

        def take() -> None:
            nonlocal memo_open
            f, resealed = inflight.popleft()
            c: Chunk = f.result()
            total.merge(c.scan)
            if progress:
                progress(c.scan.rows)
            if not resealed or not memo_open:
                return
            if not c.resealed:  # a gap: the memo ends before this range
                memo_open = False
                return
            self.memo.append(c)
            if not stage or total.bad or not c.updates:
                return
            if self._staging is None:
                self._staging = Staging(self._take_writers() or [self._conn() for _ in range(WRITERS)], self._write)
            # values the worker did not open with dst yet are opened in the pool before the write uses them
            self._staging.add(c, self.pool.submit(verify_update, c.update, reseal[1]) if c.unverified else None)

        for i, (lo, hi) in enumerate(ranges):
            rs = reseal if memo_open and i * self.batch < MEMO_ROWS else None
            if rs is None:
                memo_open = False
            # the new values are opened with dst by reencrypt, in the pool while the batches before are written
            inflight.append((self.pool.submit(read_range, self.target, snapshot, i, lo, hi, order, self.nkeys, rs,
                                              rs is None, written.get(i)), rs is not None))
            while len(inflight) > 2 * self.workers:
                take()
        while inflight:
            take()
        self.memo_full = memo_open

    # -- re-encryption ---------------------------------------------------------------------------------
    def _conn(self):
        conn = self.target.connect(autocommit=False, timeout=10)
        conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('application_name', %s, false)",
                     (f"{max(1, round(self.lock_timeout * 1000))}ms", self.application_name or "aixsss-ops keys"))
        # The batches commit without waiting for their WAL flush. A crash of the server may then lose the last few
        # committed batches: WAL replay stops at a consistent point, each batch is one transaction, so the lost ones
        # are back to the values they replaced (old-key values, still decryptable; the rerun redoes them), and no
        # value can end in neither key. Durability only matters from step 5 on, when the env files start naming the
        # new key: every reencrypt() therefore ends with one synchronous commit (_flush), which flushes the WAL up to
        # it, all the batches before it included (from either writer connection, and from an earlier killed run), and
        # waits for synchronous standbys likewise, before it returns.
        # A SIGKILL of this process loses nothing committed. The session setting covers this connection only.
        conn.execute("SET synchronous_commit = off")
        cols = ", ".join(f'"n{i}" text' for i in range(len(COLUMNS)))
        conn.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{_TMP}" ("id" text, "x" xid, {cols}) ON COMMIT DELETE ROWS')
        conn.commit()
        return conn

    @staticmethod
    def _flush(conn) -> None:
        """One synchronous commit of a transaction with an xid: the WAL is flushed up to it, earlier batches included."""
        conn.execute("SET LOCAL synchronous_commit = on")
        conn.execute("SELECT txid_current()")  # an xid, so that the commit writes (and waits for) a commit record
        conn.commit()

    def reencrypt(self, src: int, dst: int, on_batch: Callable[[PassResult, str], None] | None = None,
                  ids: Sequence[str] | None = None) -> PassResult:
        """Every ``src`` value becomes a ``dst`` value, batch by batch (each batch one transaction).

        A batch: its rows' new values (from the check's memo, or read with ``COPY`` and sealed in the pool, where each
        new value is opened again with ``dst`` before it can be written), ``COPY`` into a temp table, one
        compare-and-set ``UPDATE … FROM`` (row locks; rows changed since they were read are left for a later pass),
        ``COMMIT``. The pool seals the next batches while one is written. ``on_batch(batch_result, last_id)`` runs
        after each commit. With ``ids`` only those rows are visited. Values of neither key abort: the batch holding
        them is never written and :class:`BadValues` is raised; committed batches stay (each value is in one of the
        two keys). Returns after the committed batches are durable (see ``_conn``).
        """
        total = PassResult()
        memo: list[Chunk] = []
        stream = True
        staging, self._staging = self._staging, None
        committed: list[tuple[Chunk, str | None]] = []
        if self.memo_pair == (src, dst) and ids is None:
            memo, stream = self.memo, not self.memo_full
            if staging is not None:  # the check passed: what it wrote ahead becomes visible at once
                committed = staging.commit()
        elif staging is not None:
            staging.rollback()
        self.memo, self.memo_pair, self.memo_full = [], None, False  # good for one pass
        written = self._written(dst)
        done = {id(c) for c, _x in committed}
        # the memo's new values are opened with dst in the pool ahead of the writes; each batch waits for its own
        checks = {id(c): self.pool.submit(verify_update, c.update, dst) for c in memo
                  if c.unverified and id(c) not in done}
        batches = self._sealed(memo, stream, ids, src, dst)
        conns: list = []
        pending: deque = deque()  # (chunk, connection, write future or None), in id order
        from concurrent.futures import ThreadPoolExecutor

        # two connections write alternate batches at once (disjoint id ranges, so they never wait on each other's
        # row locks); results are taken in order, so on_batch still reports the batches in id order
        tp = ThreadPoolExecutor(WRITERS, thread_name_prefix="keys-write")
        try:
            conns += (staging.conns if staging is not None else []) or self._take_writers() or [self._conn()]
            if not self.table_exists(conns[0]):
                conns[0].rollback()
                return total
            conns[0].rollback()
            conns += [self._conn() for _ in range(WRITERS - len(conns))]
            free = list(conns)

            def account(c: Chunk, xid: str | None) -> None:
                if c.index is not None and xid is not None:
                    written[c.index] = xid
                b = _pass_result(c, src, dst)
                for k in ("batches", "rows", "reencrypted", "already", "nulls"):
                    setattr(total, k, getattr(total, k) + getattr(b, k))
                if on_batch:
                    on_batch(b, c.last_id)

            def finish() -> None:
                c, conn, fut = pending.popleft()
                xid = None
                if fut is not None:
                    xid = fut.result()
                    free.append(conn)
                account(c, xid)

            for c, xid in committed:
                account(c, xid)
            for c in batches:
                if id(c) in done:
                    continue
                if c.updates:
                    while not free:
                        finish()
                    conn = free.pop(0)
                    pending.append((c, conn, tp.submit(self._write, conn, c, checks.get(id(c)))))
                else:
                    pending.append((c, None, None))
                while len(pending) > WRITERS:
                    finish()
            while pending:
                finish()
            # always, even with nothing written here: an earlier run killed just after its last asynchronous
            # commits may have left them unflushed, and step 5 may follow this pass
            self._flush(conns[0])
        finally:
            for f in checks.values():
                f.cancel()
            tp.shutdown(wait=True)  # no connection is closed under a running write
            with contextlib.suppress(Exception):  # after a failure the first error matters
                batches.close()  # ends the reading COPY and closes its connection
            for conn in conns:  # closing ends any open transaction (and its row locks) even if rollback cannot
                with contextlib.suppress(Exception):
                    conn.rollback()
                conn.close()
        return total

    def _sealed(self, memo: list[Chunk], stream: bool, ids: Sequence[str] | None, src: int, dst: int):
        """The batches in id order: the memo's, then (when it does not cover every row) the other ranges (or the rows
        of ``ids``) freshly read and sealed in the pool."""
        yield from memo
        if not stream:
            return
        inflight: deque = deque()
        if ids is None:
            with self.target.connect(autocommit=False, timeout=10) as conn:
                ranges = list(self._ranges(conn))
            for i in range(len(memo), len(ranges)):
                lo, hi = ranges[i]
                inflight.append(self.pool.submit(read_range, self.target, None, i, lo, hi, [src, dst], self.nkeys,
                                                 (src, dst), True, None))
                while len(inflight) > 2 * self.workers:
                    yield self._checked(inflight.popleft())
        else:
            with self.target.connect(autocommit=True, timeout=10) as reader:
                rows = copy_out(reader, ids=list(ids), xmin=True)
                with contextlib.closing(rows):
                    for chunk in groups(rows, self.batch):
                        inflight.append(self.pool.submit(classify_chunk, b"".join(chunk), [src, dst], self.nkeys,
                                                         (src, dst)))
                        while len(inflight) > 2 * self.workers:
                            yield self._checked(inflight.popleft())
        while inflight:
            yield self._checked(inflight.popleft())

    @staticmethod
    def _checked(f: Future) -> Chunk:
        c: Chunk = f.result()
        if c.scan.bad or not c.resealed:
            raise BadValues(c.scan.errors[:MAX_ERRORS] or [BadValue("?", "?", "a value of another key")])
        return c

    def _write(self, conn, c: Chunk, check: Future | None, commit: bool = True) -> str | None:
        """Writes the batch in one transaction (left open with ``commit=False``); returns its xid (None when no row
        changed)."""
        if c.unverified:  # never write a value not opened with the new key
            errors = check.result() if check is not None else [BadValue("?", "?", "not verified")]
            if errors:
                raise BadValues(errors[:MAX_ERRORS])
        with conn.cursor() as cur:
            if not commit:  # the transaction goes on with more batches: the temp table holds this one's rows only
                cur.execute(f'TRUNCATE "{_TMP}"')
            with cur.copy(f'COPY "{_TMP}" FROM STDIN') as cp:
                cp.write(c.update)
            sets = ", ".join(f'"{col}" = t."n{i}"' for i, col in enumerate(COLUMNS))
            # compare-and-set: only rows still in the version that was read (and sealed) are written. Any later
            # version has another xmin: its writer committed after our read, so it cannot be the transaction that
            # wrote the version read; a concurrent update is re-checked on the newest version (EvalPlanQual) and
            # skipped. The id range lets the planner join by a range scan instead of one index probe per row. The same
            # round trip returns the transaction's xid when a row was written (the UPDATE's own xid then).
            xid = cur.execute(
                f'WITH u AS (UPDATE "{TABLE}" p SET {sets} FROM "{_TMP}" t WHERE p."id" = t."id" AND p.xmin = t."x" '
                f'AND p."id" >= %s AND p."id" <= %s RETURNING 1) '
                'SELECT CASE WHEN count(*) > 0 THEN txid_current() %% 4294967296 END FROM u',
                (c.first_update, c.last_update)).fetchone()[0]
        if commit:
            conn.commit()
        return None if xid is None else str(xid)
