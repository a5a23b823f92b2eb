"""Postgres through the standard tools: pg_dump (directory format, parallel, exported snapshot), pg_dumpall
--globals-only, pg_restore; plus per-table row counts and checksums computed inside the dump's snapshot.

Passwords travel in ``PGPASSWORD``, never on a command line.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from aixsss_ops import sysbin
from aixsss_ops.dburl import PgTarget, parse_database_url
from aixsss_ops.errors import CheckFailed, OpsError
from aixsss_ops.poll import poll_until
from aixsss_ops.procutil import die_with_parent

# Session settings that make a row's text form (and so its checksum) the same on any server.
STABLE_SETTINGS = (
    "SET datestyle = 'ISO, YMD'",
    "SET timezone = 'UTC'",
    "SET intervalstyle = 'postgres'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
    "SET synchronize_seqscans = off",
)
# Timeouts a role or database may set for every session (a managed service's statement_timeout = '200ms', say) that
# would cancel or end the long reads of a backup: off in the tool's own sessions, as pg_dump and pg_restore turn them
# off in theirs (transaction_timeout exists from PostgreSQL 17).
NO_TIMEOUTS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
NO_TIMEOUTS_17 = ("transaction_timeout",)
_SYSTEM_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'"


def conninfo_and_env(target: PgTarget, database: str | None = None) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password (for argv) and the environment carrying it."""
    parts = urlsplit(target.conninfo)
    env = {"PGCONNECT_TIMEOUT": "10"}
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username
    netloc = f"{user}@{host}" if user else host
    path = "/" + database if database else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path)), env


def tool_major(program: str) -> tuple[str, int]:
    path = sysbin.find(program)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if not m:
        raise OpsError(f"cannot read the version of {path}: {out.strip()!r}")
    return path, int(m.group(1))


def check_versions(server_version_num: int, program: str = "pg_dump") -> tuple[str, int]:
    """The tool's path; CheckFailed when it is older than the server (it would refuse, or dump badly)."""
    path, major = tool_major(program)
    server_major = server_version_num // 10000
    if major < server_major:
        raise CheckFailed(
            f"{program} {major} ({path}) is older than the PostgreSQL {server_major} server; "
            f"{program} must be >= the server's major version",
            hint=f"install postgresql-client-{server_major} (or newer)",
        )
    return path, major


class Background:
    """A program running in the background whose stderr is kept in memory (its last lines), read line by line.

    Not a file beside the backup: on a full disk that file could not be written, and the one message that says
    so would be lost. ``on_line`` sees every line as it comes (pg_restore --verbose reports finished items)."""

    def __init__(self, argv: list[str], env: dict[str, str], on_line: Callable[[str], None] | None = None,
                 keep_lines: int = 4000):
        import collections
        import threading

        self.on_line = on_line
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.callback_error: BaseException | None = None
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env={**os.environ, **env},
                                     preexec_fn=partial(die_with_parent, os.getpid()))
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.lines.append(line)
            if self.on_line is not None and self.callback_error is None:
                try:
                    self.on_line(line)
                except BaseException as e:  # noqa: BLE001 - surfaced by the caller through callback_error
                    self.callback_error = e

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self) -> int:
        rc = self.proc.wait()
        self._reader.join()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)


def run(argv: list[str], env: dict[str, str], what: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout,
                           preexec_fn=partial(die_with_parent, os.getpid()))
    except subprocess.TimeoutExpired:
        raise OpsError(f"{what} did not finish within {timeout:.0f}s") from None
    if r.returncode != 0:
        raise OpsError(f"{what} failed (exit {r.returncode}): {last_error(r.stderr)}", details=r.stderr[-4000:])
    return r


def last_error(stderr: str) -> str:
    """The line of a tool's stderr that says what went wrong (its "error:"/"ERROR:"/"FATAL:" line, else the last)."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if re.search(r"\b(error|fatal|panic)\b\s*:", ln, re.IGNORECASE)]
    errs = errs or [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
    return (errs or lines or ["no message"])[-1]


def dump_argv(pg_dump: str, conninfo: str, out_dir: Path, jobs: int, snapshot: str | None, compression: int) -> list[str]:
    argv = [pg_dump, "--format=directory", f"--jobs={jobs}", f"--compress={compression}", f"--file={out_dir}",
            "--no-password"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    return [*argv, f"--dbname={conninfo}"]


def dumpall_globals_argv(pg_dumpall: str, conninfo: str, no_role_passwords: bool = False) -> list[str]:
    """``pg_dumpall --globals-only`` to stdout: the roles are small, and this tool writes the file itself (a full
    disk is then an error here, not a silently truncated file)."""
    argv = [pg_dumpall, "--globals-only", "--no-password"]
    if no_role_passwords:
        argv.append("--no-role-passwords")
    return [*argv, f"--dbname={conninfo}"]


def restore_argv(pg_restore: str, conninfo: str, dump_dir: Path, jobs: int, *, verbose: bool = False,
                 no_owner: bool = False) -> list[str]:
    argv = [pg_restore, f"--jobs={jobs}", "--exit-on-error", "--no-password"]
    if verbose:
        argv.append("--verbose")  # "finished item N TABLE DATA t": that table's rows are in and can be checksummed
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    return [*argv, f"--dbname={conninfo}", str(dump_dir)]


def list_argv(pg_restore: str, dump_dir: Path) -> list[str]:
    return [pg_restore, "--list", str(dump_dir)]


def dump_globals(target: PgTarget, out: Path) -> str:
    """``pg_dumpall --globals-only`` into ``out``; without superuser rights role passwords are left out (said in
    the result)."""
    from aixsss_ops.fsutil import atomic_write

    path = sysbin.find("pg_dumpall")
    conninfo, env = conninfo_and_env(target)
    status = "complete"
    try:
        r = run(dumpall_globals_argv(path, conninfo), env, "pg_dumpall --globals-only", timeout=600)
    except OpsError as e:
        if "permission denied" not in (e.details or e.message):
            raise
        r = run(dumpall_globals_argv(path, conninfo, no_role_passwords=True), env, "pg_dumpall --globals-only",
                timeout=600)
        status = "without role passwords (not a superuser)"
    atomic_write(out, r.stdout, mode=0o600)
    return status


# -- inside the snapshot --

@dataclass
class TableSum:
    schema: str
    table: str
    rows: int
    checksum: str
    method: str = "text"

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


def list_tables(conn, with_blocks: bool = False) -> list[tuple]:
    """User tables (schema, name[, blocks]); extension-owned and system tables left out."""
    blocks = ", pg_relation_size(c.oid) / current_setting('block_size')::int" if with_blocks else ""
    return [tuple(r) for r in conn.execute(
        f"SELECT n.nspname, c.relname{blocks} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind = 'r' AND {_SYSTEM_SCHEMAS} "
        f"AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') ORDER BY 1, 2"
    ).fetchall()]


def unreadable(conn) -> list[str]:
    """What pg_dump would be refused, as ``schema.name``: a schema it may not use, and in the others the tables,
    partitioned tables and sequences it may not SELECT (pg_dump locks and reads every one; extension members left
    out)."""
    return [r[0] for r in conn.execute(
        "SELECT format('%I', n.nspname) || CASE WHEN has_schema_privilege(n.oid, 'USAGE') THEN '.' || "
        "format('%I', c.relname) ELSE ' (the schema)' END FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ('r', 'p', 'S') AND {_SYSTEM_SCHEMAS} "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') "
        "AND NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')) "
        "GROUP BY 1 ORDER BY 1"
    ).fetchall()]


def cannot_read(role: str, names: list[str]) -> CheckFailed:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return CheckFailed(f"the role {role} may not read {len(names)} of the database's tables, sequences or schemas "
                       f"({shown}); a backup reads every one: nothing was written",
                       hint=f"grant it: `GRANT USAGE ON SCHEMA … TO \"{role}\"; GRANT SELECT ON ALL TABLES IN "
                            f"SCHEMA … TO \"{role}\"; GRANT SELECT ON ALL SEQUENCES IN SCHEMA … TO \"{role}\"`, "
                            "or back up with the database owner's URL (--database-url)")


# How a row is hashed. "columns" (what backups record now): the XOR of one 64-bit hash per column, each by its
# type's own extended hash function seeded with the column's position (NULL: a constant per position). "record":
# hash_record_extended over the row, which builds a composite value per row (about 20% slower). Both hash by text
# (or bytes) the columns whose hash is not a function of the value alone: enums hash their OID, json and point have
# no hash, nondeterministic collations hash alike what they compare equal. "text": the hash of the row's text form.
_HASH_SAFE = frozenset({
    "bool", "int2", "int4", "int8", "numeric", "float4", "float8", "text", "varchar", "bpchar", "name", "char",
    "bytea", "jsonb", "uuid", "date", "time", "timetz", "timestamp", "timestamptz", "interval", "inet", "cidr",
    "macaddr", "macaddr8",
})
# the hash function a column of the type is passed to as it is (the others of _HASH_SAFE go through one record)
_COLUMN_HASH = {
    "int2": "hashint2extended", "int4": "hashint4extended", "int8": "hashint8extended",
    "numeric": "hash_numeric_extended", "float4": "hashfloat4extended", "float8": "hashfloat8extended",
    "text": "hashtextextended", "varchar": "hashtextextended", "bpchar": "hashbpcharextended",
    "name": "hashnameextended", "char": "hashcharextended", "jsonb": "jsonb_hash_extended",
    "uuid": "uuid_hash_extended", "time": "time_hash_extended", "timetz": "timetz_hash_extended",
    "timestamp": "timestamp_hash_extended", "interval": "interval_hash_extended", "inet": "hashinetextended",
    "cidr": "hashinetextended", "macaddr": "hashmacaddrextended", "macaddr8": "hashmacaddr8extended",
}
METHODS = ("columns", "record", "text")


def _columns(conn, schema: str, table: str) -> list[tuple[str, str, str, bool]]:
    """(name, type or domain base type, array element type or "", deterministic collation) of each column."""
    return conn.execute(
        """SELECT a.attname, coalesce(bt.typname, t.typname), coalesce(et.typname, ''),
                  coalesce(co.collisdeterministic, true)
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
           LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
           LEFT JOIN pg_type et ON et.oid = coalesce(bt.typelem, t.typelem)
                                AND coalesce(bt.typcategory, t.typcategory) = 'A'
           LEFT JOIN pg_collation co ON co.oid = a.attcollation
           WHERE a.attrelid = format('%%I.%%I', %s::text, %s::text)::regclass AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        (schema, table)).fetchall()


def _row_hash(conn, schema: str, table: str, method: str):
    from psycopg import sql

    if method not in METHODS:
        raise OpsError(f"table {schema}.{table}: checksum method {method!r} is unknown to this version of aixsss-ops",
                       hint="restore or verify it with the version that took the backup (or a newer one)")
    cols = [] if method == "text" else _columns(conn, schema, table)
    if not cols:
        return sql.SQL("hashtextextended(ROW(r.*)::text, 0)")
    whole, parts = [], []
    for pos, (name, typ, elem, deterministic) in enumerate(cols, start=1):
        col = sql.SQL("r.{}").format(sql.Identifier(name))
        if method == "columns":
            if not deterministic:
                h = sql.SQL('hashtextextended({}::text COLLATE "C", {})').format(col, pos)
            elif typ in _COLUMN_HASH:
                h = sql.SQL("{}({}, {})").format(sql.SQL(_COLUMN_HASH[typ]), col, pos)
            elif typ in _HASH_SAFE or elem in _HASH_SAFE:
                whole.append(col)
                continue
            else:
                h = sql.SQL("hashtextextended({}::text, {})").format(col, pos)
            null = (0x9E3779B97F4A7C15 * pos + 1) % 2**64
            parts.append(sql.SQL("coalesce({}, {})").format(h, null - 2**64 if null >= 2**63 else null))
        elif not deterministic:
            whole.append(sql.SQL("convert_to({}::text, 'UTF8')").format(col))
        elif typ in _HASH_SAFE or elem in _HASH_SAFE:
            whole.append(col)
        else:
            whole.append(sql.SQL("{}::text").format(col))
    if whole:
        if len(whole) == 1:
            whole.append(sql.SQL("0"))  # ROW() of one column is still a record
        parts.append(sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(whole)))
    return sql.SQL(" # ").join(parts)


def _sum_query(schema: str, table: str, lo: int | None, hi: int | None, row_hash):
    """Row count and an order-independent checksum (the sum of a 64-bit hash of each row) of a block range."""
    from psycopg import sql

    q = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {}.{} AS r").format(
        row_hash, sql.Identifier(schema), sql.Identifier(table))
    conds = []
    if lo:
        conds.append(sql.SQL("r.ctid >= {}::tid").format(sql.Literal(f"({lo},0)")))
    if hi is not None:
        conds.append(sql.SQL("r.ctid < {}::tid").format(sql.Literal(f"({hi},0)")))
    if conds:
        q = q + sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds)
    return q


def table_sum(conn, schema: str, table: str, method: str = "columns") -> TableSum:
    rows, checksum = conn.execute(_sum_query(schema, table, None, None, _row_hash(conn, schema, table, method))).fetchone()
    return TableSum(schema, table, int(rows), checksum, method)


def no_timeouts(conn) -> None:
    """Turn off the timeouts of ``NO_TIMEOUTS`` for the session. Plain SETs: they take no snapshot, so they may come
    before ``SET TRANSACTION ISOLATION LEVEL`` / ``SET TRANSACTION SNAPSHOT``."""
    names = NO_TIMEOUTS + (NO_TIMEOUTS_17 if conn.info.server_version >= 170000 else ())
    for name in names:
        conn.execute(f"SET {name} = 0")


def session(target: PgTarget, *, timeout: float = 10.0, autocommit: bool = True):
    """A connection for backup work: the role's or database's timeouts off (``no_timeouts``)."""
    conn = target.connect(timeout=timeout, autocommit=True)
    try:
        no_timeouts(conn)
        conn.autocommit = autocommit
    except BaseException:
        conn.close()
        raise
    return conn


def stable_session(conn) -> None:
    """The row text settings of ``STABLE_SETTINGS``, and no timeouts (a checksum reads a whole table)."""
    no_timeouts(conn)
    for s in STABLE_SETTINGS:
        conn.execute(s)


def _begin(conn, snapshot: str | None) -> None:
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    if snapshot:
        conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")


def table_sums(target: PgTarget, jobs: int = 1, snapshot: str | None = None,
               on_table: Callable[[TableSum], None] | None = None,
               methods: dict[str, str] | None = None) -> dict[str, TableSum]:
    """Checksums of every user table of ``target`` (optionally inside an exported snapshot).

    Large tables are split into block ranges (TID range scans) so that ``jobs`` connections share even one big
    table; the sums of the ranges add up to exactly the sum over the whole table.
    """
    import queue
    import threading

    with session(target, autocommit=False) as conn:
        _begin(conn, snapshot)
        blocks = {(s, t): n for s, t, n in list_tables(conn, with_blocks=True)}
        method = {(s, t): (methods or {}).get(f"{s}.{t}") or "columns" for s, t in blocks}
        row_hash = {k: _row_hash(conn, *k, m) for k, m in method.items()}
    jobs = max(1, jobs)
    per_chunk = max(2048, sum(blocks.values()) // (jobs * 4) + 1)
    tasks: queue.Queue = queue.Queue()
    pending: dict[tuple[str, str], int] = {}
    for (s, t), n in sorted(blocks.items(), key=lambda kv: -kv[1]):
        bounds = list(range(0, max(n, 1), per_chunk))
        pending[(s, t)] = len(bounds)
        for i, lo in enumerate(bounds):
            tasks.put((s, t, lo, bounds[i + 1] if i + 1 < len(bounds) else None))
    acc: dict[tuple[str, str], list[int]] = {k: [0, 0] for k in pending}
    out: dict[str, TableSum] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with session(target, autocommit=False) as c:
                _begin(c, snapshot)
                stable_session(c)
                while True:
                    try:
                        s, t, lo, hi = tasks.get_nowait()
                    except queue.Empty:
                        return
                    rows, checksum = c.execute(_sum_query(s, t, lo, hi, row_hash[(s, t)])).fetchone()
                    with lock:
                        a = acc[(s, t)]
                        a[0] += int(rows)
                        a[1] += int(checksum)
                        pending[(s, t)] -= 1
                        if pending[(s, t)] == 0:
                            ts = TableSum(s, t, a[0], str(a[1]), method[(s, t)])
                            out[ts.name] = ts
                            if on_table:
                                on_table(ts)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(jobs, tasks.qsize() or 1))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return out


def loaded_rows(target: PgTarget, timeout: float = 60.0) -> dict[str, TableSum]:
    """Rows pg_restore loaded into each user table of a database it has just filled, from the server's own counters
    (``n_tup_ins``: exact; PostgreSQL >= 15 keeps them in shared memory and each backend adds its own as it ends,
    before it leaves ``pg_stat_activity``, so this waits for pg_restore's connections to end). Where the counters
    are off or kept by the older statistics collector, which lags, the rows are counted."""

    from psycopg import sql

    with session(target) as c:
        def others_gone() -> bool:
            return not c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                                 "backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()[0]

        if not poll_until(others_gone, timeout, interval=0.02):
            raise OpsError(f"connections to the restored database were still open {timeout:.0f}s after pg_restore")
        counters = c.execute("SELECT current_setting('server_version_num')::int >= 150000 "
                             "AND current_setting('track_counts')::bool").fetchone()[0]
        out = {}
        for schema, table in list_tables(c):
            if counters:
                n = c.execute("SELECT coalesce(pg_stat_get_tuples_inserted(format('%%I.%%I', %s::text, %s::text)"
                              "::regclass), 0)", (schema, table)).fetchone()[0]
            else:
                n = c.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema),
                                                                          sql.Identifier(table))).fetchone()[0]
            ts = TableSum(schema, table, int(n), "", "rows")
            out[ts.name] = ts
        return out


class TableSummer:
    """Row counts and checksums of a database that pg_restore is filling, each table as soon as its rows are in.

    pg_restore --verbose says "finished item N TABLE DATA t" once the COPY of t has committed. From then on it only
    adds indexes, constraints, triggers, grants and comments to t: DDL that does not change rows (index expressions
    must be immutable, and PostgreSQL runs non-volatile functions read-only), so t's checksum is final and can be
    computed while pg_restore loads the other tables and builds t's indexes. The dump's TOC, every statement
    pg_restore runs, has passed its SHA-256 before pg_restore starts. Chunks of ``CHUNK_BLOCKS`` are statements of
    their own in autocommit: a chunk holds t's ACCESS SHARE lock only while it runs, so pg_restore's ALTER TABLE
    (ADD PRIMARY KEY takes ACCESS EXCLUSIVE) waits for one chunk at most. ``finish`` sums what was not summed early
    (and everything when pg_restore ran with one job: it reports no finished items then) once pg_restore is done.
    """

    CHUNK_BLOCKS = 2048  # 16 MB

    def __init__(self, target: PgTarget, jobs: int, methods: dict[str, str] | None = None,
                 early_jobs: int | None = None):
        import queue
        import threading

        self.target = target
        self.methods = methods or {}
        self.tasks: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.acc: dict[tuple[str, str], list[int]] = {}
        self.pending: dict[tuple[str, str], int] = {}
        self.method: dict[tuple[str, str], str] = {}
        self.out: dict[str, TableSum] = {}
        self.errors: list[BaseException] = []
        self._planner = None
        self._hash: dict[tuple[str, str], object] = {}
        jobs = max(1, jobs)
        # how many connections sum while pg_restore still runs (the rest join in once it is done)
        self.held = jobs - max(1, min(jobs, early_jobs or jobs))
        self.gate = threading.Semaphore(jobs - self.held)
        self.threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(jobs)]
        for th in self.threads:
            th.start()

    def _open_gate(self) -> None:
        for _ in range(self.held):
            self.gate.release()
        self.held = 0

    def _plan_conn(self):
        if self._planner is None:
            self._planner = session(self.target)
        return self._planner

    def add(self, schema: str, table: str) -> bool:
        """Queue the checksum of a table whose rows are all in; False when there is no such table (yet)."""
        key = (schema, table)
        with self.lock:
            if key in self.pending:
                return True
        # outside the lock: pg_relation_size waits while pg_restore's ALTER TABLE holds the table, and the workers
        # summing other tables must not wait with it (add is called by one thread at a time)
        c = self._plan_conn()
        blocks = c.execute("SELECT pg_relation_size(r) / current_setting('block_size')::int FROM "
                           "to_regclass(format('%%I.%%I', %s::text, %s::text)) r WHERE r IS NOT NULL",
                           (schema, table)).fetchone()
        if blocks is None:
            return False
        method = self.methods.get(f"{schema}.{table}") or "columns"
        row_hash = _row_hash(c, schema, table, method)
        bounds = list(range(0, max(int(blocks[0]), 1), self.CHUNK_BLOCKS))
        with self.lock:
            self._hash[key] = row_hash
            self.method[key] = method
            self.acc[key] = [0, 0]
            self.pending[key] = len(bounds)
        for i, lo in enumerate(bounds):
            self.tasks.put((schema, table, lo, bounds[i + 1] if i + 1 < len(bounds) else None))
        return True

    def _worker(self) -> None:
        conn = None
        try:
            while True:
                task = self.tasks.get()
                if task is None:
                    return
                if self.errors:
                    continue
                s, t, lo, hi = task
                if conn is None:
                    conn = self.target.connect(timeout=10, autocommit=True)
                    stable_session(conn)
                with self.gate:
                    rows, checksum = conn.execute(_sum_query(s, t, lo, hi, self._hash[(s, t)])).fetchone()
                with self.lock:
                    a = self.acc[(s, t)]
                    a[0] += int(rows)
                    a[1] += int(checksum)
                    self.pending[(s, t)] -= 1
                    if self.pending[(s, t)] == 0:
                        ts = TableSum(s, t, a[0], str(a[1]), self.method[(s, t)])
                        self.out[ts.name] = ts
        except BaseException as e:  # surfaced by finish()
            self.errors.append(e)
        finally:
            if conn is not None:
                conn.close()

    def _stop(self) -> None:
        self._open_gate()
        for _ in self.threads:
            self.tasks.put(None)
        for th in self.threads:
            th.join()
        if self._planner is not None:
            self._planner.close()
            self._planner = None

    def finish(self) -> dict[str, TableSum]:
        """Every user table of the database, summed (what was not summed early is summed now)."""
        self._open_gate()
        try:
            for s, t in list_tables(self._plan_conn()):
                self.add(s, t)
        finally:
            self._stop()
        if self.errors:
            raise self.errors[0]
        return self.out

    def abort(self) -> None:
        """pg_restore failed: drop the queued chunks and stop (the database is about to be dropped)."""
        import queue

        self.errors.append(OpsError("aborted"))
        while True:
            try:
                self.tasks.get_nowait()
            except queue.Empty:
                break
        self._stop()


_TABLE_DATA = re.compile(r"^(\d+); \d+ \d+ TABLE DATA (.+)$")
_FINISHED = re.compile(r"finished item (\d+) TABLE DATA ")


def table_data_items(listing: str, tables: list[str]) -> dict[int, tuple[str, str]]:
    """``pg_restore --list`` output -> {dump id: (schema, table)} of the TABLE DATA items of ``tables``
    ("schema.table" names). A line reads "<id>; <oid> <oid> TABLE DATA <schema> <table> <owner>"; names are not
    quoted there, so each is matched against the known tables (an ambiguous line is left out: summed at the end)."""
    known = [tuple(n.split(".", 1)) for n in tables if "." in n]
    out: dict[int, tuple[str, str]] = {}
    for line in listing.splitlines():
        m = _TABLE_DATA.match(line.strip())
        if not m:
            continue
        rest = m.group(2)
        hits = [(s, t) for s, t in known if rest == f"{s} {t}" or rest.startswith(f"{s} {t} ")]
        if len(hits) == 1:
            out[int(m.group(1))] = hits[0]
    return out


def finished_item(line: str) -> int | None:
    """The dump id of a "pg_restore: finished item N TABLE DATA t" line (pg_restore --verbose, parallel mode)."""
    m = _FINISHED.search(line)
    return int(m.group(1)) if m else None


def applied_migrations(conn) -> list[str] | None:
    """Names of the migrations recorded as applied in ``_prisma_migrations`` (None when there is no ledger)."""
    if conn.execute("SELECT to_regclass('_prisma_migrations')").fetchone()[0] is None:
        return None
    return [r[0] for r in conn.execute(
        "SELECT migration_name FROM _prisma_migrations WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL "
        "ORDER BY migration_name").fetchall()]


def admin_target(target: PgTarget) -> PgTarget:
    """The same server and credentials on the maintenance database (for CREATE/RENAME DATABASE)."""
    return target_for(target, "postgres")


def database_exists(admin: PgTarget, name: str) -> bool:
    with admin.connect() as c:
        return c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def role_exists(admin: PgTarget, name: str) -> bool:
    with admin.connect() as c:
        return c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def may_create_databases(admin: PgTarget) -> tuple[str, bool]:
    """The connecting role, and whether it may create databases (CREATEDB or superuser)."""
    with admin.connect(timeout=10) as c:
        return c.execute("SELECT current_user, rolsuper OR rolcreatedb FROM pg_roles "
                         "WHERE rolname = current_user").fetchone()


def no_createdb(role: str, why: str) -> OpsError:
    return OpsError(f"the role {role} may not create databases: {why}",
                    hint=f"grant it CREATEDB (`ALTER ROLE \"{role}\" CREATEDB`, as a superuser or the managed "
                         "service's console), or give a role that has it (--database-url)")


def create_database(admin: PgTarget, name: str, owner: str | None) -> None:
    import psycopg
    from psycopg import sql

    q = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name))
    if owner:
        q = q + sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    with admin.connect(timeout=10) as c:
        try:
            c.execute(q)
        except psycopg.errors.InsufficientPrivilege as e:
            role = c.info.user
            if owner and "member of role" in str(e):
                raise OpsError(f"the role {role} may not create a database owned by {owner} (the backed-up "
                               f"database's owner): {str(e).strip()}",
                               hint=f"`GRANT \"{owner}\" TO \"{role}\"`, or connect as {owner}") from None
            raise no_createdb(role, f"{name} cannot be created ({str(e).strip()})") from None


def end_sessions(conn, databases: list[str]) -> list[str]:
    """End the other sessions on ``databases`` (``conn`` in autocommit). Returns those this role may not end: a
    superuser's, or a process with no role such as an autovacuum worker, which Postgres itself stops when the
    database is renamed or dropped."""
    import psycopg

    kept = []
    rows = conn.execute("SELECT pid, coalesce(usename, backend_type), datname FROM pg_stat_activity "
                        "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()", (databases,)).fetchall()
    for pid, who, database in rows:
        try:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except psycopg.errors.InsufficientPrivilege:
            kept.append(f"{who} (pid {pid}) on {database}")
    return kept


def drop_database(admin: PgTarget, name: str) -> None:
    from psycopg import sql

    with admin.connect(timeout=10) as c:
        end_sessions(c, [name])
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def target_for(target: PgTarget, database: str) -> PgTarget:
    parts = urlsplit(target.conninfo)
    url = urlunsplit(parts._replace(path="/" + database))
    if target.schema:
        url += ("&" if parts.query else "?") + f"schema={target.schema}"
    return parse_database_url(url)
