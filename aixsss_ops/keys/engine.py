"""Scanning and re-encrypting the provider keys stored in ``"AIProfile"``.

A small process pool does all the per-value work (it would otherwise hold the GIL): for a whole-table pass each
worker reads id ranges itself with ``COPY … TO STDOUT`` on its own connection, in one snapshot the main process
exports, parses them, does the crypto and hands back ``COPY … FROM STDIN`` text for the writes. So the main process
only hands out ranges and writes batches, and the crypto overlaps the database work.

Re-encryption works in batches, each one transaction: ``COPY`` the batch's rows (id, the xmin of the row version
read, the new values) into a temp table, then one compare-and-set ``UPDATE … FROM`` that writes a row only where it
is still the version read. The UPDATE takes the row locks itself (no separate ``SELECT … FOR UPDATE`` round
trip); a row changed concurrently is simply not written by that batch, and the verification that follows finds
it and re-encrypts it in a later pass. A value already decrypting with the target key is left alone (the GCM tag
tells), which makes every pass idempotent and resumable: a killed batch rolls back whole and the next run redoes it.

Every new value is opened again with the target key before it can be written: by the worker that sealed it (in the
tight loop for plain rows, the sealed bytes are opened, and the stored text of one value per chunk is parsed back
and opened; see ``_reseal_all``), or, for unusual rows a check sealed ahead, in the pool while the batches before
its own are written. The final scan lets the server count the rows whose version a batch of the pass wrote (their
xmin is that batch's xid, see ``_range``) and decrypts all the others. Nothing here ever returns plaintext or keys:
workers return ciphertext, counts and (row id, column, reason).
"""

from __future__ import annotations

import binascii
import contextlib
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from aixsss_ops.crypto import KeyCipher, MalformedPayload, WrongKey
from aixsss_ops.dburl import PgTarget
from aixsss_ops.procutil import die_with_parent

TABLE = "AIProfile"
COLUMNS = ("apiKeyEncrypted", "imageApiKeyEncrypted", "videoApiKeyEncrypted")
BATCH = 2500
MEMO_ROWS = 250_000  # rows whose new values a check may keep for the rotation that follows (~100 MB at most)
SCAN_CHUNK = 5000
WRITERS = 2  # connections writing batches at once
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


def _init(keys: Sequence[bytes], parent: int | None = None) -> None:
    """Pool worker start: Ctrl-C is the parent's business (it reverts), and a parent killed by SIGKILL takes us along."""
    global _CIPHERS
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)  # a parent killed by SIGKILL (even before this ran) takes the pool along
    _CIPHERS = [KeyCipher(k) for k in keys]
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _AEADS[:] = [AESGCM(k) for k in keys]
    _INVALID_TAG[:] = [InvalidTag]


_AEADS: list = []
_INVALID_TAG: list = []
_a2b = binascii.a2b_base64


def _open(k: int, value: str) -> bytes:
    """``_CIPHERS[k].open(value)`` with the common case inlined (the same strict parsing); anything unusual goes
    through ``KeyCipher.open`` itself, so errors and their messages are exactly its own."""
    parts = value.split(".")
    if len(parts) == 3:
        try:
            iv, tag, ct = (_a2b(parts[0], strict_mode=True), _a2b(parts[1], strict_mode=True),
                           _a2b(parts[2], strict_mode=True))
        except ValueError:
            iv = tag = b""
        if len(iv) == 12 and len(tag) == 16:
            try:
                return _AEADS[k].decrypt(iv, ct + tag, None)
            except _INVALID_TAG[0]:
                raise WrongKey("authentication tag mismatch: encrypted with another key, or altered") from None
    return _CIPHERS[k].open(value)


def _whose(value: str, order: Sequence[int]) -> int | str:
    """Index of the first key (in ``order``) opening ``value``, or a reason string."""
    for i in order:
        try:
            _open(i, value)
            return i
        except WrongKey:
            continue
        except MalformedPayload as e:
            return f"malformed payload ({e})"
    return "decrypts with none of the given keys"


def _classify(rows: list[tuple], order: Sequence[int], nkeys: int, reseal: tuple[int, int] | None = None,
              verify: bool = True) -> tuple[ScanResult, list[tuple]]:
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
                    plain = _open(first, value)
                except (WrongKey, MalformedPayload):
                    plain = None
                if plain is not None:
                    res.by_key[first] += 1
                    sealed_value = _CIPHERS[reseal[1]].seal(plain)
                    # the verification with the new key of the exact text that will be stored: it is written only by a
                    # compare-and-set UPDATE setting this text, and the final scan compares stored rows byte for byte
                    try:  # (verify=False: the caller opens it later, with _verify_update, before writing it)
                        ok = not verify or _open(reseal[1], sealed_value) == plain
                    except (WrongKey, MalformedPayload):
                        ok = False
                    if not ok:
                        res.neither += 1
                        straggler = True
                        if len(res.errors) < MAX_ERRORS:
                            res.errors.append(BadValue(str(rid), col, "a sealed value does not open with the new key"))
                        continue
                    if new is None:
                        new = list(row)
                    new[i] = sealed_value
                    continue
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


# -- COPY text, parsed and written in the pool ------------------------------------------------------------

# PostgreSQL's COPY text escapes (what COPY TO prints and COPY FROM reads); other characters go through as they are
_ESC = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b", "\f": "\\f", "\v": "\\v"})
_NEEDS_ESC = re.compile(r"[\\\t\n\r\b\f\v]").search
_UNESC = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape(field: str) -> str | None:
    if field == "\\N":
        return None
    out, i, n = [], 0, len(field)
    while i < n:
        ch = field[i]
        if ch != "\\" or i + 1 == n:
            out.append(ch)
            i += 1
            continue
        nxt = field[i + 1]
        if nxt in "01234567":
            j = i + 1
            while j < n and j < i + 4 and field[j] in "01234567":
                j += 1
            out.append(chr(int(field[i + 1:j], 8)))
            i = j
        elif nxt == "x" and i + 2 < n and field[i + 2] in "0123456789abcdefABCDEF":
            j = i + 2
            while j < n and j < i + 4 and field[j] in "0123456789abcdefABCDEF":
                j += 1
            out.append(chr(int(field[i + 2:j], 16)))
            i = j
        else:
            out.append(_UNESC.get(nxt, nxt))
            i += 2
    return "".join(out)


def _line(fields: Sequence[str | None]) -> bytes:
    """One row of COPY text, exactly as ``COPY … TO STDOUT`` prints it (and ``COPY … FROM STDIN`` reads it)."""
    return ("\t".join("\\N" if f is None else f.translate(_ESC) if _NEEDS_ESC(f) else f for f in fields)
            + "\n").encode("utf-8", "surrogateescape")


@dataclass
class Chunk:
    """What the pool makes of one chunk of rows. ``update`` is temp-table COPY text: id, xmin read, new values."""

    scan: ScanResult
    last_id: str | None = None
    update: bytes = b""
    updates: int = 0
    first_update: str | None = None
    last_update: str | None = None
    # writing ``update`` leaves every row of the chunk in dst (False: a value of neither key, or of a key not in the
    # pair, turned up)
    resealed: bool = False
    unverified: bool = False  # the new values in ``update`` are still to be opened with dst (_verify_update)
    index: int | None = None  # the id range the chunk is (Engine.bounds), when it is one


def _reseal_all(data: bytes, src: int, dst: int, nkeys: int) -> Chunk | None:
    """The common case of ``_chunk`` with ``reseal=(src, dst)``, in one tight loop over the COPY bytes: every row has
    its three values (no NULL, nothing escaped) and each opens with ``src``. None as soon as anything else turns up (a
    value of another key, a malformed one, an escape): the caller then takes the general path for the whole chunk.

    Every new value is verified here: its ciphertext and tag are opened with ``dst`` under its IV, the very bytes
    whose base64 becomes the stored text. The text itself (``b2a`` of those bytes in the iv.tag.ciphertext order) is
    parsed back and opened (``_open``) for the chunk's first value: one assembly for all of them."""
    if b"\\" in data:
        return None
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if not lines:
        return None
    dec, enc, vdec = _AEADS[src].decrypt, _AEADS[dst].encrypt, _AEADS[dst].decrypt
    a2b, b2a = binascii.a2b_base64, binascii.b2a_base64
    n = len(lines)
    ivs = os.urandom(12 * len(COLUMNS) * n)  # fresh random IVs, one read for the chunk
    out: list[bytes] = []
    add = out.append
    j = 0
    try:
        for ln in lines:
            rid, xmin, *values = ln.split(b"\t")
            if len(values) != len(COLUMNS):
                return None
            add(rid)
            add(b"\t")
            add(xmin)
            for value in values:
                iv, tag, ct = value.split(b".")
                iv, tag = a2b(iv, strict_mode=True), a2b(tag, strict_mode=True)
                if len(iv) != 12 or len(tag) != 16:
                    return None
                plain = dec(iv, a2b(ct, strict_mode=True) + tag, None)
                niv = ivs[j:j + 12]
                j += 12
                s = enc(niv, plain, None)
                if vdec(niv, s, None) != plain:
                    return None
                add(b"\t")
                add(b".".join((b2a(niv, newline=False), b2a(s[-16:], newline=False), b2a(s[:-16], newline=False))))
            add(b"\n")
    except (ValueError, _INVALID_TAG[0]):  # a wrong number of parts or fields, bad base64, another key
        return None
    update = b"".join(out)
    try:
        first = update[:update.index(b"\n")].split(b"\t")[2].decode("ascii")
        if _open(dst, first) != _open(src, lines[0].split(b"\t")[2].decode("ascii")):
            return None
    except (WrongKey, MalformedPayload, UnicodeDecodeError):
        return None
    by_key = [0] * nkeys
    by_key[src] = len(COLUMNS) * n
    last = lines[-1].split(b"\t", 1)[0].decode("utf-8", "surrogateescape")
    return Chunk(ScanResult(rows=n, values=len(COLUMNS) * n, by_key=by_key), last, update=update, updates=n,
                 first_update=lines[0].split(b"\t", 1)[0].decode("utf-8", "surrogateescape"), last_update=last,
                 resealed=True)


def _chunk(data: bytes, order: Sequence[int], nkeys: int, reseal: tuple[int, int] | None = None,
           verify: bool = True) -> Chunk:
    """``_classify`` on a chunk of COPY text; with ``reseal=(src, dst)`` also its update (with ``verify=False`` its
    new values are not opened yet: ``unverified``). With ``reseal`` each row's COPY text carries its xmin after its id
    (``_copy_out(xmin=True)``), which the update keeps for the compare-and-set."""
    if reseal is not None and reseal[0] == order[0]:
        fast = _reseal_all(data, reseal[0], reseal[1], nkeys)
        if fast is not None:
            return fast
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    xmins: list[str] = []
    if reseal is not None:
        split = [ln.split("\t", 2) for ln in lines]
        xmins = [f[1] for f in split]
        lines = [f"{f[0]}\t{f[2]}" for f in split]
    rows = [tuple(ln.split("\t")) if "\\" not in ln else tuple(_unescape(f) for f in ln.split("\t")) for ln in lines]
    res, sealed = _classify(rows, order, nkeys, reseal, verify)
    out = Chunk(res, rows[-1][0] if rows else None, unverified=bool(sealed) and not verify)
    others = any(n for k, n in enumerate(res.by_key) if reseal is None or k not in reseal)
    if reseal is None or res.bad or others:
        return out
    # a line without a backslash has no NULL and nothing escaped: its fields (and sealed values, plain base64)
    # go into COPY text as they are
    news = {row[0]: new for row, new in sealed}
    parts = []
    for row, ln, xmin in zip(rows, lines, xmins, strict=True):
        new = news.get(row[0])
        if new is None:  # nothing to change: all its values opened with dst
            continue
        if "\\" not in ln:  # nothing escaped: the fields (and sealed values, plain base64) go into COPY text as they are
            vals = "\t".join(new[1:])
            parts.append(f"{row[0]}\t{xmin}\t{vals}\n".encode("utf-8", "surrogateescape"))
        else:
            parts.append(_line((row[0], xmin, *new[1:])))
    if sealed:
        out.first_update, out.last_update = sealed[0][0][0], sealed[-1][0][0]
    out.update, out.updates, out.resealed = b"".join(parts), len(sealed), True
    return out


def _verify_update(update: bytes, dst: int) -> list[BadValue]:
    """Opens with ``dst`` every value of an update (temp-table COPY text: id, xmin, new values): the verification of
    a check's sealed values, in the pool while earlier batches are written, before this one is."""
    bad: list[BadValue] = []
    n = len(COLUMNS)
    vdec, a2b = _AEADS[dst].decrypt, binascii.a2b_base64
    for ln in update.decode("utf-8", "surrogateescape").split("\n"):
        if not ln:
            continue
        fields = ln.split("\t")
        if "\\" in ln:
            fields = [_unescape(f) for f in fields]
        for i in range(n):
            value = fields[2 + i]
            if value is None:
                continue
            try:  # _open inlined for the usual well-formed value; anything else gets _open's own error
                p = value.split(".")
                iv, tag = a2b(p[0], strict_mode=True), a2b(p[1], strict_mode=True)
                if len(p) == 3 and len(iv) == 12 and len(tag) == 16:
                    vdec(iv, a2b(p[2], strict_mode=True) + tag, None)
                    continue
            except (ValueError, IndexError, _INVALID_TAG[0]):
                pass
            try:
                _open(dst, value)
            except (WrongKey, MalformedPayload) as e:
                bad.append(BadValue(str(fields[0]), COLUMNS[i], f"does not verify with the new key ({e})"))
    return bad


# -- the database side ------------------------------------------------------------------------------------

def default_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _range_cond(lo: str | None, hi: str | None):
    from psycopg import sql

    cond = [sql.SQL("TRUE")]
    if lo is not None:
        cond.append(sql.SQL('"id" >= {}').format(sql.Literal(lo)))
    if hi is not None:
        cond.append(sql.SQL('"id" < {}').format(sql.Literal(hi)))
    return sql.SQL(" AND ").join(cond)


def _copy_out(conn, *, lo: str | None = None, hi: str | None = None, ids: Sequence[str] | None = None,
              xmin: bool = False, not_written_by: str | None = None):
    """The rows (id, with ``xmin`` the row version's xmin, and the three columns, by id; those of ``ids``, or with
    lo <= id < hi; not those whose version transaction ``not_written_by`` wrote), one COPY text line each, as the
    server sends them."""
    from psycopg import sql

    cond = [_range_cond(lo, hi)]
    if not_written_by is not None:
        cond.append(sql.SQL("NOT (xmin = {}::xid)").format(sql.Literal(not_written_by)))
    if ids is not None:
        cond.append(sql.SQL('"id" = ANY({})').format(sql.Literal(list(ids))))
    q = sql.SQL('COPY (SELECT "id", {}{} FROM {} WHERE {} ORDER BY "id") TO STDOUT').format(
        sql.SQL("xmin, " if xmin else ""), sql.SQL(_SELECT), sql.Identifier(TABLE), sql.SQL(" AND ").join(cond))
    with conn.cursor() as cur, cur.copy(q) as cp:
        yield from cp  # libpq hands out one data row per read


_WORKER_CONN: dict = {}


def _range(target: PgTarget, snapshot: str | None, index: int, lo: str | None, hi: str | None, order: Sequence[int],
           nkeys: int, reseal: tuple[int, int] | None, verify: bool, written_by: str | None) -> Chunk:
    """One id range read by a pool worker on its own connection (in the exported ``snapshot`` when given), then
    ``_chunk``. ``written_by``: the xid of the batch transaction that wrote the range's new values, every one opened
    with ``order[0]`` before it was written. A row version whose xmin is that xid is one that transaction wrote, and
    its only write was that compare-and-set UPDATE (any later change makes a version with another xmin): such rows
    are counted by the server, and only the others are read and decrypted."""
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
                sql.SQL(_SELECT), sql.Identifier(TABLE), _range_cond(lo, hi), sql.Literal(written_by))).fetchone()
        data = b"".join(_copy_out(conn, lo=lo, hi=hi, xmin=reseal is not None, not_written_by=written_by))
    c = _chunk(data, order, nkeys, reseal, verify)
    c.index = index
    if known is not None:
        rows, values = known
        c.scan.merge(ScanResult(rows=rows, values=values, nulls=len(COLUMNS) * rows - values,
                                by_key=[values if k == order[0] else 0 for k in range(nkeys)]))
    if c.last_id is None and data:
        c.last_id = data[:data.index(b"\t")].decode("utf-8", "surrogateescape")
    return c


def _chunks(rows, size: int):
    """Lists of up to ``size`` COPY lines."""
    buf: list = []
    for row in rows:
        buf.append(row)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _pass_result(c: Chunk, src: int, dst: int) -> PassResult:
    return PassResult(batches=1, rows=c.scan.rows, reencrypted=c.scan.by_key[src], already=c.scan.by_key[dst],
                      nulls=c.scan.nulls)


class Engine:
    """A process pool holding the keys (in that order) and the database target. Use as a context manager.

    Whole-table passes split the table into id ranges of ``batch`` rows (``bounds``, fixed for the engine's life)
    that pool workers read themselves, on their own connections, in a snapshot the engine exports; the main process
    only hands out ranges and writes batches."""

    def __init__(self, target: PgTarget, keys: Sequence[bytes], *, workers: int | None = None, batch: int = BATCH):
        self.target = target
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
        import multiprocessing

        # fork before any database connection exists in this process; the children run crypto and read ranges
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                        initializer=_init, initargs=(list(keys), os.getpid()))
        # start the workers now (an idle pool otherwise forks lazily, after connections are open)
        for f in [self.pool.submit(os.getpid) for _ in range(self.workers)]:
            f.result()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for conn in self._take_writers():
            conn.close()

    def _take_writers(self) -> list:
        pre, self._writers = self._writers, None
        try:
            return pre.result() if pre is not None else []
        except Exception:  # noqa: BLE001 - reencrypt opens them itself and reports a failure then
            return []

    def table_exists(self, conn) -> bool:
        return conn.execute("SELECT to_regclass(%s)", (f'"{TABLE}"',)).fetchone()[0] is not None

    def _ranges(self, conn) -> Iterator[tuple[str | None, str | None]]:
        """(lo, hi) of every id range, in id order. The bounds are read once, in ``conn``'s transaction, through a
        cursor handing out each bound as soon as the index scan reaches it, so the first ranges start early."""
        bounds = self.bounds
        if bounds is None:
            bounds = []
            with conn.cursor(name="aixsss_keys_bounds") as cur:
                cur.itersize = 1
                cur.execute(f'SELECT "id" FROM (SELECT "id", row_number() OVER (ORDER BY "id") AS n FROM "{TABLE}") s '
                            'WHERE n %% %s = 1 AND n > 1', (self.batch,))
                lo = None
                for (hi,) in cur:
                    bounds.append(hi)
                    yield lo, hi
                    lo = hi
            self.bounds = bounds
            yield lo, None
            return
        yield from zip([None, *bounds], [*bounds, None], strict=True)

    def _written(self, key: int) -> dict[int, str]:
        if self.written_key != key:
            self.written, self.written_key = {}, key
        return self.written

    # -- read-only scan --------------------------------------------------------------------------------
    def scan(self, order: Sequence[int], progress: Callable[[int], None] | None = None,
             ids: Iterable[str] | None = None, reseal: tuple[int, int] | None = None) -> ScanResult:
        """Whose key every stored value is, trying the keys in ``order``; one snapshot, no locks.

        With ``reseal=(src, dst)`` the crypto of the next ``reencrypt(src, dst)`` is done here too (up to
        MEMO_ROWS rows): it only writes what is unchanged by then, so a check that runs while nothing is written yet
        takes the crypto off the batches."""
        order = list(order)
        total = ScanResult(by_key=[0] * self.nkeys)
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
                rows = _copy_out(conn, ids=list(ids))
                with contextlib.closing(rows):
                    futures = [self.pool.submit(_chunk, b"".join(chunk), order, self.nkeys)
                               for chunk in _chunks(rows, SCAN_CHUNK)]
                for f in futures:
                    c = f.result()
                    total.merge(c.scan)
                    if progress:
                        progress(c.scan.rows)
            else:
                self._scan_ranges(conn, order, reseal, total, progress)
            conn.rollback()
        if reseal is not None and not total.bad:
            self.memo_pair = reseal
        else:
            self.memo = []
        return total

    def _scan_ranges(self, conn, order: list[int], reseal: tuple[int, int] | None, total: ScanResult,
                     progress: Callable[[int], None] | None) -> None:
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

        for i, (lo, hi) in enumerate(ranges):
            rs = reseal if memo_open and i * self.batch < MEMO_ROWS else None
            if rs is None:
                memo_open = False
            # the new values are opened with dst by reencrypt, in the pool while the batches before are written
            inflight.append((self.pool.submit(_range, self.target, snapshot, i, lo, hi, order, self.nkeys, rs,
                                              rs is None, written.get(i)), rs is not None))
            while len(inflight) > 2 * self.workers:
                take()
        while inflight:
            take()
        self.memo_full = memo_open

    # -- re-encryption ---------------------------------------------------------------------------------
    def _conn(self):
        conn = self.target.connect(autocommit=False, timeout=10)
        conn.execute("SET lock_timeout = '60s'")  # a row held elsewhere for that long fails the batch, never hangs
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
        if self.memo_pair == (src, dst) and ids is None:
            memo, stream = self.memo, not self.memo_full
        self.memo, self.memo_pair, self.memo_full = [], None, False  # good for one pass
        written = self._written(dst)
        # the memo's new values are opened with dst in the pool ahead of the writes; each batch waits for its own
        checks = {id(c): self.pool.submit(_verify_update, c.update, dst) for c in memo if c.unverified}
        batches = self._sealed(memo, stream, ids, src, dst)
        conns: list = []
        pending: deque = deque()  # (chunk, connection, write future or None), in id order
        from concurrent.futures import ThreadPoolExecutor

        # two connections write alternate batches at once (disjoint id ranges, so they never wait on each other's
        # row locks); results are taken in order, so on_batch still reports the batches in id order
        tp = ThreadPoolExecutor(WRITERS, thread_name_prefix="keys-write")
        try:
            conns += self._take_writers() or [self._conn()]
            if not self.table_exists(conns[0]):
                conns[0].rollback()
                return total
            conns[0].rollback()
            conns += [self._conn() for _ in range(WRITERS - len(conns))]
            free = list(conns)

            def finish() -> None:
                c, conn, fut = pending.popleft()
                if fut is not None:
                    xid = fut.result()
                    free.append(conn)
                    if c.index is not None and xid is not None:
                        written[c.index] = xid
                b = _pass_result(c, src, dst)
                for k in ("batches", "rows", "reencrypted", "already", "nulls"):
                    setattr(total, k, getattr(total, k) + getattr(b, k))
                if on_batch:
                    on_batch(b, c.last_id)

            for c in batches:
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
                inflight.append(self.pool.submit(_range, self.target, None, i, lo, hi, [src, dst], self.nkeys,
                                                 (src, dst), True, None))
                while len(inflight) > 2 * self.workers:
                    yield self._checked(inflight.popleft())
        else:
            with self.target.connect(autocommit=True, timeout=10) as reader:
                rows = _copy_out(reader, ids=list(ids), xmin=True)
                with contextlib.closing(rows):
                    for chunk in _chunks(rows, self.batch):
                        inflight.append(self.pool.submit(_chunk, b"".join(chunk), [src, dst], self.nkeys, (src, dst)))
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

    def _write(self, conn, c: Chunk, check: Future | None) -> str | None:
        """Writes the batch in one transaction; returns its xid (None when no row changed)."""
        if c.unverified:  # never write a value not opened with the new key
            errors = check.result() if check is not None else [BadValue("?", "?", "not verified")]
            if errors:
                raise BadValues(errors[:MAX_ERRORS])
        with conn.cursor() as cur:
            with cur.copy(f'COPY "{_TMP}" FROM STDIN') as cp:
                cp.write(c.update)
            sets = ", ".join(f'"{col}" = t."n{i}"' for i, col in enumerate(COLUMNS))
            # compare-and-set: only rows still in the version that was read (and sealed) are written. Any later
            # version has another xmin: its writer committed after our read, so it cannot be the transaction that
            # wrote the version read; a concurrent update is re-checked on the newest version (EvalPlanQual) and
            # skipped. The id range lets the planner join by a range scan instead of one index probe per row.
            cur.execute(f'UPDATE "{TABLE}" p SET {sets} FROM "{_TMP}" t WHERE p."id" = t."id" AND p.xmin = t."x" '
                        f'AND p."id" >= %s AND p."id" <= %s', (c.first_update, c.last_update))
            xid = str(cur.execute("SELECT txid_current() % 4294967296").fetchone()[0]) if cur.rowcount else None
        conn.commit()
        return xid
