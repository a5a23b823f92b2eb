"""Postgres through the standard tools: pg_dump (directory format, parallel, exported snapshot), pg_dumpall
--globals-only, pg_restore; plus per-table row counts and checksums computed inside the dump's snapshot.

Passwords travel in ``PGPASSWORD``, never on a command line.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from aixsss_ops import sysbin
from aixsss_ops.dburl import PgTarget, parse_database_url
from aixsss_ops.errors import CheckFailed, OpsError

# Session settings that make a row's text form (and so its checksum) the same on any server.
STABLE_SETTINGS = (
    "SET datestyle = 'ISO, YMD'",
    "SET timezone = 'UTC'",
    "SET intervalstyle = 'postgres'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
    "SET synchronize_seqscans = off",
)
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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a killed backup run takes its pg_dump with it


def popen(argv: list[str], env: dict[str, str], stderr_path: Path) -> subprocess.Popen:
    with stderr_path.open("wb") as err:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, **env}, preexec_fn=_die_with_parent)


def run(argv: list[str], env: dict[str, str], what: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout,
                           preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired:
        raise OpsError(f"{what} did not finish within {timeout:.0f}s") from None
    if r.returncode != 0:
        raise OpsError(f"{what} failed (exit {r.returncode}): {last_error(r.stderr)}", details=r.stderr[-4000:])
    return r


def last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
    return (errs or lines or ["no message"])[-1]


def dump_argv(pg_dump: str, conninfo: str, out_dir: Path, jobs: int, snapshot: str | None, compression: int) -> list[str]:
    argv = [pg_dump, "--format=directory", f"--jobs={jobs}", f"--compress={compression}", f"--file={out_dir}",
            "--no-password"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    return [*argv, f"--dbname={conninfo}"]


def dumpall_globals_argv(pg_dumpall: str, conninfo: str, out: Path, no_role_passwords: bool = False) -> list[str]:
    argv = [pg_dumpall, "--globals-only", f"--file={out}", "--no-password"]
    if no_role_passwords:
        argv.append("--no-role-passwords")
    return [*argv, f"--dbname={conninfo}"]


def restore_argv(pg_restore: str, conninfo: str, dump_dir: Path, jobs: int) -> list[str]:
    return [pg_restore, f"--jobs={jobs}", "--exit-on-error", "--no-password", f"--dbname={conninfo}", str(dump_dir)]


def dump_globals(target: PgTarget, out: Path) -> str:
    """``pg_dumpall --globals-only``; without superuser rights role passwords are left out (said in the result)."""
    path = sysbin.find("pg_dumpall")
    conninfo, env = conninfo_and_env(target)
    try:
        run(dumpall_globals_argv(path, conninfo, out), env, "pg_dumpall --globals-only", timeout=600)
        return "complete"
    except OpsError as e:
        if "permission denied" not in (e.details or e.message):
            raise
    run(dumpall_globals_argv(path, conninfo, out, no_role_passwords=True), env, "pg_dumpall --globals-only",
        timeout=600)
    return "without role passwords (not a superuser)"


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


# How a row is hashed. "record": hash_record_extended over the row's columns (no text conversion, about 3x
# faster), with the columns whose hash is not a function of the value alone (enums hash their OID; json, geometry
# have no hash; nondeterministic collations) cast to text/bytes first. "text": the hash of the row's text form.
_HASH_SAFE = frozenset({
    "bool", "int2", "int4", "int8", "numeric", "float4", "float8", "text", "varchar", "bpchar", "name", "char",
    "bytea", "jsonb", "uuid", "date", "time", "timetz", "timestamp", "timestamptz", "interval", "inet", "cidr",
    "macaddr", "macaddr8", "money", "bit", "varbit",
})


def _row_hash(conn, schema: str, table: str, method: str):
    from psycopg import sql

    if method == "text":
        return sql.SQL("hashtextextended(ROW(r.*)::text, 0)")
    cols = conn.execute(
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
    if not cols:
        return sql.SQL("hashtextextended(ROW(r.*)::text, 0)")
    parts = []
    for name, typ, elem, deterministic in cols:
        col = sql.SQL("r.{}").format(sql.Identifier(name))
        if not deterministic:
            parts.append(sql.SQL("convert_to({}::text, 'UTF8')").format(col))
        elif typ in _HASH_SAFE or elem in _HASH_SAFE:
            parts.append(col)
        else:
            parts.append(sql.SQL("{}::text").format(col))
    if len(parts) == 1:
        parts.append(sql.SQL("0"))  # ROW() of one column is still a record
    return sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(parts))


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


def table_sum(conn, schema: str, table: str, method: str = "record") -> TableSum:
    rows, checksum = conn.execute(_sum_query(schema, table, None, None, _row_hash(conn, schema, table, method))).fetchone()
    return TableSum(schema, table, int(rows), checksum, method)


def stable_session(conn) -> None:
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

    with target.connect(autocommit=False) as conn:
        _begin(conn, snapshot)
        blocks = {(s, t): n for s, t, n in list_tables(conn, with_blocks=True)}
        method = {(s, t): (methods or {}).get(f"{s}.{t}") or "record" for s, t in blocks}
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
            with target.connect(autocommit=False) as c:
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


def create_database(admin: PgTarget, name: str, owner: str | None) -> None:
    from psycopg import sql

    q = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name))
    if owner:
        q = q + sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    with admin.connect(timeout=10) as c:
        c.execute(q)


def drop_database(admin: PgTarget, name: str) -> None:
    from psycopg import sql

    with admin.connect(timeout=10) as c:
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                  (name,))
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def target_for(target: PgTarget, database: str) -> PgTarget:
    parts = urlsplit(target.conninfo)
    url = urlunsplit(parts._replace(path="/" + database))
    if target.schema:
        url += ("&" if parts.query else "?") + f"schema={target.schema}"
    return parse_database_url(url)
