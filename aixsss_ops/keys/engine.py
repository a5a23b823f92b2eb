"""Scanning and re-encrypting the provider keys stored in ``"AIProfile"``.

The crypto runs in a small process pool (the per-value Python work would otherwise hold the GIL) while the
main process talks to PostgreSQL, so the two overlap. Re-encryption works in batches, each one transaction:
``SELECT … ORDER BY id LIMIT n FOR UPDATE`` (row locks), crypto in the pool, ``COPY`` into a temp table,
``UPDATE … FROM``, ``COMMIT``. Two connections alternate, so batch i+1 is read and its crypto runs while batch i
is written. A value already decrypting with the target key is left alone (the GCM tag tells), which makes every
pass idempotent and resumable: a killed batch rolls back whole and the next run redoes it.

Nothing here ever returns plaintext or keys: workers return ciphertext, counts and (row id, column, reason).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from aixsss_ops.crypto import KeyCipher, MalformedPayload, WrongKey
from aixsss_ops.dburl import PgTarget
from aixsss_ops.errors import OpsError

TABLE = "AIProfile"
COLUMNS = ("apiKeyEncrypted", "imageApiKeyEncrypted", "videoApiKeyEncrypted")
BATCH = 5000
MEMO_ROWS = 250_000  # rows whose new values a check may keep for the rotation that follows (~100 MB at most)
SCAN_CHUNK = 5000
MAX_ERRORS = 50
LOCK_KEY = 0x4B455953  # pg advisory lock: one rotation at a time per database ("KEYS")

_SELECT = ", ".join(f'"{c}"' for c in COLUMNS)
_TMP = "_aixsss_keys_rotate"


@dataclass(frozen=True)
class BadValue:
    """One stored value that no given key opens (or that is not a payload at all). Never holds the value."""

    row_id: str
    column: str
    reason: str

    def __str__(self) -> str:
        return f'"{TABLE}" id={self.row_id} column "{self.column}": {self.reason}'


@dataclass
class ScanResult:
    rows: int = 0
    values: int = 0
    nulls: int = 0
    by_key: list[int] = field(default_factory=list)  # counts per key, in the order the keys were given
    neither: int = 0
    malformed: int = 0
    errors: list[BadValue] = field(default_factory=list)  # the first MAX_ERRORS
    straggler_ids: list[str] = field(default_factory=list)  # rows holding a value not of the first key (capped)

    @property
    def bad(self) -> int:
        return self.neither + self.malformed

    def merge(self, other: ScanResult) -> None:
        self.rows += other.rows
        self.values += other.values
        self.nulls += other.nulls
        self.by_key = [a + b for a, b in zip(self.by_key, other.by_key, strict=True)] if self.by_key else other.by_key
        self.neither += other.neither
        self.malformed += other.malformed
        self.errors += other.errors[: MAX_ERRORS - len(self.errors)]
        self.straggler_ids += other.straggler_ids[: 100_000 - len(self.straggler_ids)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["errors"] = [str(e) for e in self.errors]
        del d["straggler_ids"]
        return d


@dataclass
class PassResult:
    batches: int = 0
    rows: int = 0
    reencrypted: int = 0
    already: int = 0
    nulls: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class BadValues(Exception):
    """Values that neither key opens turned up during a pass; the batch holding them was rolled back."""

    def __init__(self, errors: list[BadValue]):
        super().__init__(f"{len(errors)} value(s) decrypt with neither key: {errors[0]}")
        self.errors = errors


# -- the pool side ----------------------------------------------------------------------------------------

_CIPHERS: list[KeyCipher] = []


def _init(keys: Sequence[bytes]) -> None:
    """Pool worker start: Ctrl-C is the parent's business (it reverts), and a parent killed by SIGKILL takes us along."""
    global _CIPHERS
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    _CIPHERS = [KeyCipher(k) for k in keys]


def _whose(value: str, order: Sequence[int]) -> int | str:
    """Index of the first key (in ``order``) opening ``value``, or a reason string."""
    for i in order:
        try:
            _CIPHERS[i].open(value)
            return i
        except WrongKey:
            continue
        except MalformedPayload as e:
            return f"malformed payload ({e})"
    return "decrypts with none of the given keys"


def _classify(rows: list[tuple], order: Sequence[int], nkeys: int,
              reseal: tuple[int, int] | None = None) -> tuple[ScanResult, list[tuple]]:
    """Whose every value is; with ``reseal=(src, dst)`` also the rows' new values (src values sealed with dst)."""
    res = ScanResult(by_key=[0] * nkeys)
    first = order[0]
    sealed: list[tuple] = []
    for row in rows:
        res.rows += 1
        rid = row[0]
        straggler = False
        new = None
        for i, (col, value) in enumerate(zip(COLUMNS, row[1:], strict=True), 1):
            if value is None:
                res.nulls += 1
                continue
            res.values += 1
            if reseal is not None and reseal[0] == first:
                try:  # the common case of a check before rotating: open with src once, seal right away
                    plain = _CIPHERS[first].open(value)
                    res.by_key[first] += 1
                    if new is None:
                        new = list(row)
                    new[i] = _CIPHERS[reseal[1]].seal(plain)
                    continue
                except (WrongKey, MalformedPayload):
                    pass
            who = _whose(value, order)
            if isinstance(who, int):
                res.by_key[who] += 1
                straggler |= who != first
                continue
            straggler = True
            if who.startswith("malformed"):
                res.malformed += 1
            else:
                res.neither += 1
            if len(res.errors) < MAX_ERRORS:
                res.errors.append(BadValue(str(rid), col, who))
        if straggler:
            res.straggler_ids.append(rid)
        if new is not None:
            sealed.append((row, tuple(new)))
    return res, sealed


def _reencrypt(rows: list[tuple], src: int, dst: int) -> tuple[list[tuple], PassResult, list[BadValue]]:
    """New column values for the rows holding a ``src`` value; ``dst`` values stay as they are."""
    s, d = _CIPHERS[src], _CIPHERS[dst]
    updates: list[tuple] = []
    res = PassResult(rows=len(rows))
    errors: list[BadValue] = []
    for row in rows:
        out = list(row)
        changed = False
        for i, value in enumerate(row[1:], 1):
            if value is None:
                res.nulls += 1
                continue
            try:
                out[i] = d.seal(s.open(value))
                changed = True
                res.reencrypted += 1
                continue
            except WrongKey:
                pass
            except MalformedPayload as e:
                errors.append(BadValue(str(row[0]), COLUMNS[i - 1], f"malformed payload ({e})"))
                continue
            try:
                d.open(value)
                res.already += 1
            except WrongKey:
                errors.append(BadValue(str(row[0]), COLUMNS[i - 1], "decrypts with neither the old nor the new key"))
        if changed:
            updates.append(tuple(out))
    return updates, res, errors


def _verify(rows: list[tuple], key: int) -> list[BadValue]:
    """Stored values (as ``UPDATE … RETURNING`` gives them) that ``key`` does not open."""
    c = _CIPHERS[key]
    bad: list[BadValue] = []
    for row in rows:
        for col, value in zip(COLUMNS, row[1:], strict=True):
            if value is None:
                continue
            try:
                c.open(value)
            except (WrongKey, MalformedPayload) as e:
                bad.append(BadValue(str(row[0]), col, f"does not verify with the new key after writing ({e})"))
    return bad


# -- the database side ------------------------------------------------------------------------------------

def default_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


class Engine:
    """A process pool holding the keys (in that order) and the database target. Use as a context manager."""

    def __init__(self, target: PgTarget, keys: Sequence[bytes], *, workers: int | None = None, batch: int = BATCH):
        self.target = target
        self.nkeys = len(keys)
        # rows re-sealed during a check: id -> (values seen, new values); used by the next reencrypt if unchanged
        self.memo: dict[str, tuple[tuple, tuple]] = {}
        self.memo_pair: tuple[int, int] | None = None  # the (src, dst) the memo was sealed for
        # rows whose stored values were verified with key ``verified_key`` after writing: id -> values
        self.verified: dict[str, tuple] = {}
        self.verified_key: int | None = None
        self.batch = batch
        self.workers = workers or default_workers()
        import multiprocessing

        # fork before any database connection exists in this process; the children only ever run crypto
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                        initializer=_init, initargs=(list(keys),))
        # start the workers now (an idle pool otherwise forks lazily, after connections are open)
        for f in [self.pool.submit(os.getpid) for _ in range(self.workers)]:
            f.result()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _split(self, rows: list[tuple]) -> list[list[tuple]]:
        n = self.workers
        size = -(-len(rows) // n) if rows else 0
        return [rows[i:i + size] for i in range(0, len(rows), size)] if size else []

    def table_exists(self, conn) -> bool:
        return conn.execute("SELECT to_regclass(%s)", (f'"{TABLE}"',)).fetchone()[0] is not None

    # -- read-only scan --------------------------------------------------------------------------------
    def scan(self, order: Sequence[int], progress: Callable[[int], None] | None = None,
             ids: Iterable[str] | None = None, reseal: tuple[int, int] | None = None) -> ScanResult:
        """Whose key every stored value is, trying the keys in ``order``; one snapshot, no locks.

        With ``reseal=(src, dst)`` the crypto of the next ``reencrypt(src, dst)`` is done here too (up to
        MEMO_ROWS rows): it only writes what it finds unchanged, so a check that runs while nothing is written yet
        takes the crypto off the locked batches."""
        total = ScanResult(by_key=[0] * self.nkeys)
        self.memo, self.memo_pair = {}, reseal
        with self.target.connect(autocommit=False, timeout=10) as conn:
            if not self.table_exists(conn):
                return total
            conn.rollback()
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            with conn.cursor(name="aixsss_keys_scan") as cur:
                cur.itersize = SCAN_CHUNK
                if ids is None:
                    cur.execute(f'SELECT "id", {_SELECT} FROM "{TABLE}"')
                else:
                    cur.execute(f'SELECT "id", {_SELECT} FROM "{TABLE}" WHERE "id" = ANY(%s)', (list(ids),))
                inflight: list[Future] = []
                # values verified right after this engine wrote them, unchanged since: no need to decrypt again
                known = self.verified if self.verified_key == order[0] and ids is None else {}
                while True:
                    rows = cur.fetchmany(SCAN_CHUNK)
                    todo = rows
                    if rows and known:
                        todo = []
                        for row in rows:
                            v = known.get(row[0])
                            if v is None or v != row[1:]:
                                todo.append(row)
                                continue
                            total.rows += 1
                            n = sum(x is not None for x in v)
                            total.values += n
                            total.nulls += len(v) - n
                            total.by_key[order[0]] += n
                        if progress and len(todo) < len(rows):
                            progress(len(rows) - len(todo))
                    if todo:
                        rs = reseal if reseal and len(self.memo) < MEMO_ROWS else None
                        inflight += [self.pool.submit(_classify, part, list(order), self.nkeys, rs)
                                     for part in self._split(todo)]
                    while inflight and (len(inflight) > 2 * self.workers or not rows):
                        part, sealed = inflight.pop(0).result()
                        for row, new in sealed:
                            self.memo[row[0]] = (row[1:], new)
                        total.merge(part)
                        if progress:
                            progress(part.rows)
                    if not rows:
                        break
            conn.rollback()
        return total

    # -- re-encryption ---------------------------------------------------------------------------------
    def _conn(self):
        conn = self.target.connect(autocommit=False, timeout=10)
        conn.execute("SET lock_timeout = '60s'")  # a row held elsewhere for that long fails the batch, never hangs
        cols = ", ".join(f'"{c}" text' for c in COLUMNS)
        conn.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{_TMP}" ("id" text, {cols}) ON COMMIT DELETE ROWS')
        conn.commit()
        return conn

    def reencrypt(self, src: int, dst: int, on_batch: Callable[[PassResult, str], None] | None = None,
                  ids: Sequence[str] | None = None) -> PassResult:
        """Every ``src`` value becomes a ``dst`` value, batch by batch (each batch one transaction).

        A batch: ``SELECT … FOR UPDATE`` (row locks), crypto in the pool (or the check's memo), ``COPY`` into a temp
        table, ``UPDATE … FROM … RETURNING``, the returned (stored) values decrypted with ``dst`` in the pool, and only
        then ``COMMIT``: no batch is committed unverified. Three connections form a pipeline, so batch i is read
        while batch i-1 is written and batch i-2 verified. ``on_batch(batch_result, last_id)`` runs after each
        commit. With ``ids`` only those rows are visited. Values of neither key abort: the batch holding them rolls
        back and :class:`BadValues` is raised; committed batches stay (each value is in one of the two keys).
        """
        total = PassResult()
        conns: list = []
        if self.memo_pair != (src, dst):
            self.memo, self.memo_pair = {}, None
        if self.verified_key != dst:
            self.verified, self.verified_key = {}, dst
        try:
            probe = self._conn()
            conns.append(probe)
            if not self.table_exists(probe):
                probe.rollback()
                return total
            probe.rollback()
            conns += [self._conn(), self._conn()]
            id_list = list(ids) if ids is not None else None
            last: str | None = None
            pos = 0
            fetched = written = None  # (conn, futures, last) read and sealing; (conn, batch, verify futures, last)
            i = 0
            while True:
                conn = conns[i % 3]
                rows = self._fetch(conn, id_list, pos, last)
                if id_list is not None:
                    pos += self.batch
                    if not rows and pos < len(id_list):  # rows deleted meanwhile: go on with the next chunk
                        conn.rollback()
                        continue
                if rows:
                    last = rows[-1][0]
                    futures = self._seal(rows, src, dst)
                nxt = self._write(*fetched, dst) if fetched is not None else None
                if written is not None:
                    self._commit(*written, total, on_batch)
                written, fetched = nxt, None
                if not rows:
                    conn.rollback()
                    break
                fetched = (conn, futures, last)
                i += 1
            if fetched is not None:
                written = self._write(*fetched, dst)
            if written is not None:
                self._commit(*written, total, on_batch)
        finally:
            for c in conns:  # closing ends any open transaction (and its row locks) even if rollback cannot
                with contextlib.suppress(Exception):  # after a failure (or an interrupted query) the first error matters
                    c.rollback()
                c.close()
        return total

    def _fetch(self, conn, id_list: list[str] | None, pos: int, last: str | None) -> list[tuple]:
        if id_list is not None:
            chunk = id_list[pos:pos + self.batch]
            if not chunk:
                return []
            q = f'SELECT "id", {_SELECT} FROM "{TABLE}" WHERE "id" = ANY(%s) ORDER BY "id" FOR UPDATE'
            return conn.execute(q, (chunk,)).fetchall()
        if last is None:
            q = f'SELECT "id", {_SELECT} FROM "{TABLE}" ORDER BY "id" LIMIT %s FOR UPDATE'
            return conn.execute(q, (self.batch,)).fetchall()
        q = f'SELECT "id", {_SELECT} FROM "{TABLE}" WHERE "id" > %s ORDER BY "id" LIMIT %s FOR UPDATE'
        return conn.execute(q, (last, self.batch)).fetchall()

    def _seal(self, rows: list[tuple], src: int, dst: int) -> list[Future]:
        """The batch's new values: from the check's memo when the row is unchanged since, else from the pool."""
        ready: list[tuple] = []
        todo = rows
        pr = PassResult()
        if self.memo:
            todo = []
            for row in rows:
                m = self.memo.pop(row[0], None)
                if m is None or m[0] != row[1:]:
                    todo.append(row)
                    continue
                ready.append(m[1])
                pr.rows += 1
                for v, o in zip(m[1][1:], m[0], strict=True):
                    if v is None:
                        pr.nulls += 1
                    elif v != o:
                        pr.reencrypted += 1
                    else:
                        pr.already += 1
        futures = [self.pool.submit(_reencrypt, part, src, dst) for part in self._split(todo)]
        if ready:
            done: Future = Future()
            done.set_result((ready, pr, []))
            futures.append(done)
        return futures

    def _write(self, conn, futures: list[Future], last: str, dst: int):
        batch = PassResult(batches=1)
        updates: list[tuple] = []
        errors: list[BadValue] = []
        for f in futures:
            u, r, e = f.result()
            updates += u
            errors += e
            batch.rows += r.rows
            batch.reencrypted += r.reencrypted
            batch.already += r.already
            batch.nulls += r.nulls
        if errors:
            conn.rollback()
            raise BadValues(errors[:MAX_ERRORS])
        verify: list[Future] = []
        if updates:
            with conn.cursor() as cur:
                with cur.copy(f'COPY "{_TMP}" ("id", {_SELECT}) FROM STDIN') as cp:
                    for u in updates:
                        cp.write_row(u)
                sets = ", ".join(f'"{c}" = t."{c}"' for c in COLUMNS)
                ret = ", ".join(f'p."{c}"' for c in COLUMNS)
                # the id range lets the planner join by a range scan instead of one index probe per row
                stored = cur.execute(
                    f'UPDATE "{TABLE}" p SET {sets} FROM "{_TMP}" t WHERE p."id" = t."id" '
                    f'AND p."id" >= %s AND p."id" <= %s RETURNING p."id", {ret}',
                    (min(u[0] for u in updates), max(u[0] for u in updates))).fetchall()
            if len(stored) != len(updates):
                conn.rollback()
                raise OpsError(f"a batch updated {len(stored)} of {len(updates)} locked rows; rolled back")
            verify = [self.pool.submit(_verify, part, dst) for part in self._split(stored)]
            if len(self.verified) < MEMO_ROWS:
                self.verified.update((row[0], row[1:]) for row in stored)
        return conn, batch, verify, last

    def _commit(self, conn, batch: PassResult, verify: list[Future], last: str, total: PassResult,
                on_batch: Callable[[PassResult, str], None] | None) -> None:
        errors = [e for f in verify for e in f.result()]
        if errors:
            conn.rollback()
            raise BadValues(errors[:MAX_ERRORS])
        conn.commit()
        for k in ("batches", "rows", "reencrypted", "already", "nulls"):
            setattr(total, k, getattr(total, k) + getattr(batch, k))
        if on_batch:
            on_batch(batch, last)
