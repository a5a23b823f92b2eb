"""``backup create``: one restore point for Postgres and the object store.

1. clean the remains of interrupted runs; check pg_dump >= server; enable bucket versioning; check clocks
2. open a REPEATABLE READ transaction, ``pg_export_snapshot()``; T = the snapshot's statement time
3. in parallel: ``pg_dump --format=directory --jobs N --snapshot``, per-table counts and checksums in the same
   snapshot, the object manifest at T, ``pg_dumpall --globals-only``
4. SHA-256 of every file (encrypting it first when asked, in the same pass), then the manifest, atomically;
   only then is the backup complete.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aixsss_ops import __version__
from aixsss_ops.backup import crypt, disk, objects
from aixsss_ops.backup import manifest as mf
from aixsss_ops.backup import postgres as pgb
from aixsss_ops.backup.catalog import Catalog
from aixsss_ops.crypto import fingerprint
from aixsss_ops.dburl import PgTarget
from aixsss_ops.errors import OpsError
from aixsss_ops.fsutil import atomic_write


class Reporter:
    """Progress hooks; the CLI renders them (rich on a TTY), the domain only calls them."""

    def phase(self, message: str) -> None: ...

    def dumped(self, nbytes: int, total: int | None) -> None: ...

    def table(self, done: int, total: int, name: str) -> None: ...

    def warn(self, message: str) -> None: ...


@dataclass
class CreateOptions:
    label: str | None = None
    jobs: int = 0
    compression: int = 1
    encryption_key: bytes | None = None
    signing_key: bytes | None = None  # the backup key, when one is configured: the manifest gets an HMAC
    api_key: bytes | None = None  # the derived API_KEY_ENCRYPTION_KEY in force: only its fingerprint is stored
    app: dict[str, Any] = field(default_factory=dict)
    keep: bool = False
    retention_days: int = 35
    noncurrent_version_days: int = 0
    align_to_second: bool = True


@dataclass
class CreateResult:
    id: str
    path: str
    manifest: dict[str, Any]
    actions: list[str]
    warnings: list[str]
    cleaned: list[str]

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "id": self.id, "path": self.path, "created_at": m["created_at"], "label": m.get("label"),
            "duration_s": m["duration_s"], "database": m["database"]["name"],
            "database_size": m["database"]["size_bytes"], "dump_size": sum(f["size"] for f in m["files"].values()),
            "tables": len(m["tables"]), "rows": sum(t["rows"] for t in m["tables"].values()),
            "objects": (m.get("objects") or {}).get("count"), "encrypted": bool(m.get("encryption")),
            "actions": self.actions, "warnings": self.warnings, "cleaned": self.cleaned,
        }


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _dir_size(path: Path) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                with suppress(FileNotFoundError):
                    total += e.stat().st_size
    except FileNotFoundError:
        pass
    return total


def create_backup(
    catalog: Catalog,
    pg: PgTarget,
    s3: objects.S3Target | None,
    bucket: str | None,
    opts: CreateOptions,
    report: Reporter | None = None,
) -> CreateResult:
    rep = report or Reporter()
    actions: list[str] = []
    warnings: list[str] = []
    cleaned = catalog.cleanup()
    if cleaned:
        rep.phase(f"removed the remains of {len(cleaned)} interrupted run(s)")
    jobs = opts.jobs or cores()
    started = time.monotonic()

    with pgb.session(pg) as ctl:
        server_num = int(ctl.execute("SHOW server_version_num").fetchone()[0])
        pg_dump, dump_major = pgb.check_versions(server_num, "pg_dump")
        refused = pgb.unreadable(ctl)
        if refused:
            raise pgb.cannot_read(ctl.info.user, refused)
        skew = None
        if s3 is not None:
            if objects.ensure_versioning(s3, bucket):
                actions.append(f"enabled versioning on bucket {bucket}")
                rep.phase(f"enabled versioning on bucket {bucket} (object versions are what backups restore)")
            lw, added = objects.lifecycle_warnings(s3, bucket, opts.retention_days, opts.noncurrent_version_days)
            warnings += lw
            if added:
                actions.append(f"added a lifecycle rule expiring noncurrent versions after "
                               f"{opts.noncurrent_version_days} days to bucket {bucket}")
            before = ctl.execute("SELECT clock_timestamp()").fetchone()[0]
            s3_now = objects.server_time(s3)
            after = ctl.execute("SELECT clock_timestamp()").fetchone()[0]
            skew = objects.check_clock(s3_now, before, after)
        if opts.align_to_second:
            # Start the snapshot just after a second boundary: object stores stamp versions to the second.
            now = ctl.execute("SELECT clock_timestamp()").fetchone()[0]
            frac = now.microsecond / 1e6
            if frac > 0.02:
                time.sleep(1.0 - frac + 0.003)
    for w in warnings:
        rep.warn(w)

    created_wall = mf.utcnow()
    backup_id = mf.new_id(created_wall)
    try:
        partial, lock = catalog.begin(backup_id)
    except OSError as e:
        if disk.is_no_space(e):
            raise disk.full(catalog.root, "starting the backup", "nothing was written (an empty partial directory, "
                            "if one was made, is removed by the next run)") from None
        raise
    proc = None
    snap_conn = None
    pool = f_glob = None
    stage = "writing the dump"
    try:
        db_dir = partial / mf.DB_DIR
        # held open, idle in its transaction, until pg_dump is done: no idle_in_transaction_session_timeout
        snap_conn = pgb.session(pg, autocommit=False)
        snap_conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snap_id, at, db_size, owner, dbname = snap_conn.execute(
            "SELECT pg_export_snapshot(), statement_timestamp(), pg_database_size(current_database()), "
            "pg_get_userbyid(d.datdba), current_database() FROM pg_database d WHERE d.datname = current_database()"
        ).fetchone()
        rep.phase(f"snapshot taken at {mf.iso(at)}")
        conninfo, env = pgb.conninfo_and_env(pg)
        proc = pgb.Background(pgb.dump_argv(pg_dump, conninfo, db_dir, jobs, snap_id, opts.compression), env)

        pool = ThreadPoolExecutor(3)
        tables_total = len(pgb.list_tables(snap_conn))
        done = [0]
        lock_t = threading.Lock()

        def on_table(ts: pgb.TableSum) -> None:
            with lock_t:
                done[0] += 1
                rep.table(done[0], tables_total, ts.name)

        f_sums = pool.submit(pgb.table_sums, pg, 1, snap_id, on_table)
        f_objs = pool.submit(objects.take_snapshot, s3, bucket, at) if s3 is not None else None
        f_glob = pool.submit(pgb.dump_globals, pg, partial / mf.GLOBALS)
        migrations = pgb.applied_migrations(snap_conn)
        while proc.poll() is None:
            rep.dumped(sum(_dir_size(d) for d in [db_dir]), db_size)
            time.sleep(0.25)
        proc.wait()
        if proc.returncode != 0:
            err = proc.stderr
            raise OpsError(f"pg_dump of the PostgreSQL database failed (exit {proc.returncode}): {pgb.last_error(err)}",
                           details=err[-4000:])
        proc = None
        sums = f_sums.result()
        stage = "writing globals.sql"
        globals_status = f_glob.result()
        snap = f_objs.result() if f_objs is not None else None
        pool.shutdown()
        snap_conn.commit()
        snap_conn.close()
        snap_conn = None

        stage = "writing the object manifest"
        if snap is not None:
            atomic_write(partial / mf.OBJECTS, snap.to_json(), mode=0o600)
        rep.phase("checksumming" + (" and encrypting" if opts.encryption_key else "") + " the files")
        stage = "encrypting the files" if opts.encryption_key else "checksumming the files"
        files = _seal_files(partial, opts.encryption_key, jobs)
        stage = "writing the manifest"

        finished = mf.utcnow()
        manifest = {
            "format": mf.FORMAT,
            "id": backup_id,
            "label": opts.label,
            "tool": {"name": "aixsss-ops", "version": __version__},
            "created_at": mf.iso(at),
            "started_at": mf.iso(created_wall),
            "finished_at": mf.iso(finished),
            "duration_s": round(time.monotonic() - started, 3),
            "database": {
                "name": dbname, "schema": pg.schema, "owner": owner, "size_bytes": int(db_size),
                "server_version_num": server_num, "pg_dump_major": dump_major, "format": "directory",
                "compression": opts.compression, "jobs": jobs, "globals": globals_status,
            },
            "tables": {n: {"rows": t.rows, "checksum": t.checksum, "method": t.method} for n, t in sorted(sums.items())},
            "migrations": migrations,
            "files": files,
            "objects": None if snap is None else {
                "bucket": snap.bucket, "count": len(snap.objects), "total_size": sum(o["size"] or 0 for o in snap.objects),
                "checksum": snap.checksum, "resolution_s": snap.resolution_s,
            },
            "clock_skew_s": skew,
            "encryption": None if not opts.encryption_key else {
                "algorithm": crypt.ALGORITHM, "key_fingerprint": crypt.key_fingerprint(opts.encryption_key)},
            "api_key_fingerprint": fingerprint(opts.api_key) if opts.api_key else None,
            "app": opts.app,
        }
        meta = {"keep": True} if opts.keep else None
        signing_key = opts.signing_key or opts.encryption_key
        signature = mf.sign(manifest, signing_key) if signing_key else None
        final = catalog.finish(partial, lock, manifest, meta, signature)
        return CreateResult(backup_id, str(final), manifest, actions, warnings, cleaned)
    except BaseException as e:
        if proc is not None:
            proc.kill()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            if f_glob is not None:  # it writes into the partial directory: let it end before that is removed
                with suppress(BaseException):
                    f_glob.result()
        if snap_conn is not None:
            with suppress(Exception):
                snap_conn.close()
        catalog.abandon(partial, lock)
        tool_says = isinstance(e, OpsError) and disk.says_no_space(e.details or e.message)
        if disk.is_no_space(e) or tool_says:
            left = ("the partial backup was removed, nothing is listed as complete" if not partial.exists() else
                    f"nothing is listed as complete; the remains in {partial} are removed by the next run")
            raise disk.full(catalog.root, stage, left,
                            details=e.details if isinstance(e, OpsError) else str(e)) from None
        raise


def _seal_files(partial: Path, key: bytes | None, jobs: int) -> dict[str, dict[str, Any]]:
    """SHA-256 and size of every file of the backup (encrypted first when ``key`` is given), in one pass each."""
    paths = [p for p in sorted(partial.rglob("*")) if p.is_file() and not p.name.startswith(".")
             and p.name not in (mf.MANIFEST, mf.META)]

    def seal(p: Path) -> tuple[str, dict[str, Any]]:
        if key is None:
            digest, size = mf.sha256_file(p)
            return str(p.relative_to(partial)), {"sha256": digest, "size": size}
        enc = p.with_name(p.name + ".enc")
        digest, size = crypt.encrypt_file(p, enc, key)
        p.unlink()
        return str(enc.relative_to(partial)), {"sha256": digest, "size": size}

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return dict(pool.map(seal, paths))
