"""``backup restore``: a plan first, then the database by swap and the objects by version.

Database: the backup's roles that the server lacks are created (``roles``: never an existing one changed), then
pg_restore (parallel) into a new scratch database while the SHA-256 of its data files is checked, the rows each table
received compared with the manifest (with ``checksums`` each table's checksum too, computed as soon as pg_restore
has loaded it), provider keys re-encrypted when the key changed since the backup; only then,
with the app stopped, one transaction renames the live database to ``<name>_pre_restore_<time>`` (marked by a
comment, so that ``backup cleanup`` finds it) and the scratch one to ``<name>``. The live database is therefore
either untouched or fully restored, and the previous one is kept for undo.

Objects: each recorded version made current again by a server-side copy, keys created after the snapshot
hidden by delete markers; versions are never deleted, objects that already match are skipped.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aixsss_ops.backup import disk, objects, previous, rekey, roles
from aixsss_ops.backup import manifest as mf
from aixsss_ops.backup import postgres as pgb
from aixsss_ops.backup.catalog import Catalog, Entry
from aixsss_ops.backup.scratch import drop_orphans, held
from aixsss_ops.backup.verify import (
    check_files,
    compare_tables,
    dump_id,
    is_table_data,
    manifest_status,
    materialize,
    read_globals,
    read_objects,
    require_key,
    restore_database,
    table_items,
)
from aixsss_ops.dburl import PgTarget
from aixsss_ops.errors import CheckFailed, OpsError, UsageError


@dataclass
class RestorePlan:
    backup_id: str
    created_at: str
    database: dict[str, Any] | None = None
    objects: objects.ObjectPlan | None = None
    keys: rekey.KeyPlan | None = None
    roles: roles.RolePlan | None = None
    manifest: str = "unauthenticated"
    deferred_files: list[str] = field(default_factory=list)  # proven by execute_restore (_FileCheck)
    newer_migrations: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup": self.backup_id, "snapshot_at": self.created_at, "database": self.database,
            "objects": self.objects.to_dict() if self.objects else None,
            "keys": self.keys.to_dict() if self.keys else None, "newer_migrations": self.newer_migrations,
            "roles": self.roles.to_dict() if self.roles else None, "manifest": self.manifest,
            "steps": self.steps, "warnings": self.warnings,
        }


def migration_names(directory: Path) -> list[str] | None:
    if not directory.is_dir():
        return None
    return sorted(p.name for p in directory.iterdir() if (p / "migration.sql").is_file())


def plan_restore(
    entry: Entry,
    *,
    pg: PgTarget | None,
    s3: objects.S3Target | None,
    db: bool = True,
    objs: bool = True,
    target_db: str | None = None,
    migrations_dir: Path | None = None,
    force: bool = False,
    backup_key: bytes | None = None,
    backup_key_env: str = "",
    current_api_key: bytes | None = None,
    old_api_key: bytes | None = None,
    old_api_key_source: str | None = None,
    env_hint: str = "the api env file",
    apply_globals: bool = True,
    checksums: bool = False,
) -> RestorePlan:
    m = entry.manifest
    plan = RestorePlan(entry.id, m["created_at"])
    if backup_key is not None and m.get("encryption"):
        require_key(entry, backup_key, backup_key_env)
    plan.manifest = manifest_status(entry, backup_key, backup_key_env)  # CheckFailed naming a tampered manifest
    if plan.manifest != "authenticated":
        plan.warnings.append("the manifest is unauthenticated (no backup key when it was taken): checksums only"
                             if plan.manifest == "unauthenticated" else
                             f"the manifest is signed but {backup_key_env} is not set: its signature is not checked")
    # With a database to restore, the table-data files of the dump are proven during and after pg_restore
    # (execute_restore, _FileCheck): they only feed COPY, and nothing replaces the live database unless they pass.
    # The TOC (what pg_restore executes) and every other file are checked now, before anything runs.
    defer = db
    problems = check_files(entry, only=(lambda rel: not is_table_data(rel)) if defer else None)
    if problems:
        raise CheckFailed(f"backup {entry.id} failed its checksums: {problems[0]}", details="\n".join(problems))
    if defer:
        plan.deferred_files = sorted(rel for rel in m["files"] if is_table_data(rel))
    require_key(entry, backup_key, backup_key_env)
    snap = read_objects(entry, backup_key) if objs else None
    if db:
        if pg is None:
            raise UsageError("no database to restore into: pass --database-url, set DATABASE_URL, or run the stack")
        if migrations_dir is not None and m.get("migrations") is not None:
            known = migration_names(migrations_dir)
            if known is not None:
                plan.newer_migrations = [n for n in m["migrations"] if n not in set(known)]
        if plan.newer_migrations and not force:
            raise CheckFailed(
                f"backup {entry.id} has a schema newer than this tool's migrations: "
                + ", ".join(plan.newer_migrations[:5]) + (" …" if len(plan.newer_migrations) > 5 else ""),
                hint="upgrade aixsss-ops/the app first, or pass --force to restore anyway")
        plan.keys = rekey.plan_keys(m.get("api_key_fingerprint"), current_api_key, old_api_key, old_api_key_source,
                                    env_hint)
        name = target_db or pg.database
        live = target_db is None
        role, may = pgb.may_create_databases(pgb.admin_target(pg))
        if not may:
            raise pgb.no_createdb(role, "a restore loads the backup into a new database before it replaces "
                                        f"{name}; nothing was changed")
        _check_owner(pgb.admin_target(pg), role, m["database"].get("owner"))
        exists = pgb.database_exists(pgb.admin_target(pg), name)
        if target_db and exists:
            raise UsageError(f"--target-db {target_db} already exists; name a new database")
        stamp = mf.utcnow().strftime("%Y%m%dT%H%M%SZ")
        # 63 bytes at most (PostgreSQL cuts longer names): 34 + "_pre_restore_" + 16, or 30 + … + "_xx" when a
        # restore in the same second already kept one
        previous_name = f"{name[:34]}_pre_restore_{stamp}"
        if exists and pgb.database_exists(pgb.admin_target(pg), previous_name):
            previous_name = f"{name[:30]}_pre_restore_{stamp}_{secrets.token_hex(1)}"
        plan.database = {
            "name": name, "live": live, "exists": exists, "server": pg.masked, "backup": entry.id,
            "scratch": f"{name[:40]}_restoring_{secrets.token_hex(3)}",
            "previous": previous_name if exists else None,
            "tables": len(m["tables"]), "rows": sum(t["rows"] for t in m["tables"].values()),
            "checksums": checksums,
        }
        text = read_globals(entry, backup_key) if apply_globals else None
        if text is not None:
            plan.roles = roles.plan_roles(text, roles.existing_roles(pgb.admin_target(pg)))
            r = plan.roles
            if r.create:
                plan.steps.append(
                    f"create {len(r.create)} role(s) of the backup that this server lacks (globals.sql): "
                    + ", ".join(r.create) + (f" (can log in: {', '.join(r.logins)})" if r.logins else "")
                    + "; existing roles are left as they are")
            for skipped in r.skipped:
                plan.warnings.append(f"globals.sql: not applied: {skipped}")
        if _hash_every_file(checksums, plan.manifest, m):
            proof = f"checking the SHA-256 of its {len(plan.deferred_files)} table-data file(s) meanwhile"
        else:
            proof = (f"its {len(plan.deferred_files)} table-data file(s) proven by "
                     + ("AES-GCM and " if m.get("encryption") else "") + "the table comparison that follows")
        plan.steps.append(f"pg_restore backup {entry.id} into a new database {plan.database['scratch']}, {proof}")
        plan.steps.append("compare row counts and checksums of every table with the manifest (reads the restored "
                          "data once)" if checksums else "compare the rows each table received with the manifest's "
                          "row counts (--checksums: compare every table's checksum as well)")
        if plan.keys.action == "rekey":
            plan.steps.append(f"re-encrypt provider keys from key {plan.keys.backup_fingerprint} to "
                              f"{plan.keys.current_fingerprint}")
        elif plan.keys.action == "unknown":
            plan.warnings.append("the backup records no API key fingerprint (or no current key is known): provider "
                                 "keys are restored as they are")
        if exists:
            plan.steps.append(f"stop the api and worker; rename {name} -> {plan.database['previous']} (kept for undo) "
                              f"and {plan.database['scratch']} -> {name} in one transaction")
        else:
            plan.steps.append(f"rename {plan.database['scratch']} -> {name}")
    if snap is not None:
        if s3 is None:
            raise UsageError("the backup has an object manifest but no S3 store is configured (or pass --db-only)")
        plan.objects = objects.plan_restore(s3, snap)
        if plan.objects.missing:
            raise CheckFailed(
                f"{len(plan.objects.missing)} recorded object version(s) no longer exist in {plan.objects.bucket}: "
                + ", ".join(f"{o['key']}@{o['version_id']}" for o in plan.objects.missing[:5]),
                hint="a lifecycle rule or a manual delete removed them; restore with --db-only to skip objects")
        p = plan.objects
        plan.steps.append(f"objects in {p.bucket}: make {len(p.copy)} recorded version(s) current again (server-side "
                          f"copy), add delete markers to {len(p.hide)} newer key(s), {p.unchanged} already match")
    elif objs and m.get("objects") is None and not db:
        raise UsageError(f"backup {entry.id} has no object manifest")
    return plan


def _check_owner(admin: PgTarget, role: str, owner: str | None) -> None:
    """The restored copy is created owned by the backed-up database's owner (where that role exists here): the
    connecting role must be a member of it."""
    if not owner:
        return
    with admin.connect(timeout=10) as c:
        row = c.execute("SELECT pg_has_role(oid, 'MEMBER') FROM pg_roles WHERE rolname = %s", (owner,)).fetchone()
    if row is not None and not row[0]:
        raise CheckFailed(f"the role {role} may not create a database owned by {owner} (the backed-up database's "
                          "owner), as the restored copy is; nothing was changed",
                          hint=f'`GRANT "{owner}" TO "{role}"`, or restore connected as {owner}')


def _no_sessions_it_may_not_end(admin: PgTarget, name: str) -> None:
    """The switch renames ``name``, which needs every session on it ended: refuse before any work when some belong
    to a role the connecting one may not signal (a superuser's, another role's without pg_signal_backend).
    Processes with no role (autovacuum) are not counted: the rename stops them itself."""
    with admin.connect(timeout=10) as c:
        rows = c.execute(
            "SELECT a.pid, a.usename, a.application_name FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid "
            "WHERE a.datname = %s AND a.pid <> pg_backend_pid() "
            "AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
            "AND (r.rolsuper OR NOT (pg_has_role(r.oid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE')))",
            (name,)).fetchall()
        role = c.info.user
    if rows:
        who = ", ".join(f"{u} (pid {pid}{', ' + app if app else ''})" for pid, u, app in rows)
        raise CheckFailed(f"{name} has sessions the role {role} may not end, and the switch to the restored copy "
                          f"renames it: {who}; nothing was changed",
                          hint="end them (pg_terminate_backend as a superuser, or close those clients) and rerun")


@dataclass
class RestoreResult:
    plan: RestorePlan
    database: dict[str, Any] | None = None
    objects: dict[str, int] | None = None
    keys: dict[str, int] | None = None
    roles: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "database": self.database, "objects": self.objects, "keys": self.keys,
                "roles": self.roles}


def execute_restore(
    catalog: Catalog,
    entry: Entry,
    plan: RestorePlan,
    *,
    pg: PgTarget | None,
    s3: objects.S3Target | None,
    jobs: int,
    backup_key: bytes | None = None,
    stop_app: Callable[[], list[str]] | None = None,
    start_app: Callable[[list[str]], None] | None = None,
    phase: Callable[[str], None] | None = None,
) -> RestoreResult:
    say = phase or (lambda _m: None)
    res = RestoreResult(plan)
    stopped: list[str] | None = None
    try:
        if plan.database is not None:
            d = plan.database
            admin = pgb.admin_target(pg)
            if d["exists"]:
                _no_sessions_it_may_not_end(admin, d["name"])
            if plan.objects is not None and d["live"]:
                objects.check_writable(s3, plan.objects.bucket)
            for name in drop_orphans(admin):
                say(f"dropped {name}, the scratch database of a killed run")
            guard = ExitStack()
            guard.enter_context(held(admin, d["scratch"]))  # until the scratch copy is swapped in or dropped
            if plan.roles is not None and plan.roles.create:
                say(f"creating role(s) {', '.join(plan.roles.create)}")
                rr = roles.apply_roles(admin, plan.roles)
                res.roles = rr.to_dict()
            # the work folder holds a decrypted copy of an encrypted dump: removed after pg_restore, and by the next
            # run when this one is killed
            with catalog.work_dir("restore", entry.id) as work:
                checker = _FileCheck(entry, plan.deferred_files)
                try:
                    try:
                        dump_dir = materialize(entry, backup_key, work)
                    except OSError as e:
                        if disk.is_no_space(e):
                            raise disk.full(catalog.root, "decrypting the dump for pg_restore", "the scratch copy was "
                                            f"removed; the live database {d['name']} was not touched") from None
                        raise
                    checksums = d["checksums"]
                    items = table_items(entry, dump_dir) if checksums else {}
                    checker.start(plan.deferred_files if _hash_every_file(checksums, plan.manifest, entry.manifest) else
                                  [rel for rel in plan.deferred_files if dump_id(rel) not in items])
                    say(f"pg_restore into {d['scratch']}")
                    scratch, sums = restore_database(entry, dump_dir, pg, d["scratch"], jobs, phase=say, items=items,
                                                     checksums=checksums)
                except OpsError:
                    checker.raise_problems(d["name"], every=True)  # a damaged file explains a failed pg_restore best
                    raise
            try:
                checker.raise_problems(d["name"])
                problems = compare_tables(entry.manifest["tables"], sums)
                if problems:
                    checker.raise_problems(d["name"], every=True)
                    raise CheckFailed(f"the restored database differs from the backup: {problems[0]}",
                                      details="\n".join(problems))
                if plan.keys and plan.keys.action == "rekey":
                    say("re-encrypting provider keys with the current key")
                    res.keys = rekey.rekey_profiles(scratch, plan.keys.old_key, plan.keys.current_key)
            except BaseException:
                with guard:
                    pgb.drop_database(admin, d["scratch"])
                raise
            if d["exists"] and d["live"] and stop_app is not None:
                say("stopping the api and worker")
                stopped = stop_app()
            say(f"switching {d['name']} to the restored database")
            with guard:
                _swap(admin, d)
            res.database = {"name": d["name"], "previous": d["previous"], "tables": d["tables"], "rows": d["rows"]}
        if plan.objects is not None:
            if stopped is None and stop_app is not None and (plan.database is None or plan.database["live"]):
                stopped = stop_app()
            say(f"restoring objects in {plan.objects.bucket}")
            res.objects = objects.apply_restore(s3, plan.objects, jobs=max(4, jobs * 4))
    finally:
        if stopped and start_app is not None:
            say("starting the api and worker again")
            start_app(stopped)
    return res


def _hash_every_file(checksums: bool, manifest_status: str, manifest: dict[str, Any]) -> bool:
    """Whether every table-data file is hashed alongside pg_restore: always, unless ``--checksums`` proves them and
    the SHA-256 is not their one cryptographic proof (a signed manifest of an unencrypted backup), see _FileCheck."""
    return not checksums or (manifest_status == "authenticated" and not manifest.get("encryption"))


class _FileCheck:
    """The SHA-256 of the dump's table-data files, in a background thread alongside pg_restore (one core:
    pg_restore needs the others).

    With ``--checksums`` every table's checksum is compared with the manifest after the restore, which proves its
    data file's content; such a file is then hashed as well only when the SHA-256 is the one cryptographic proof of
    it (a signed manifest, files not encrypted: AES-GCM authenticates an encrypted file as it is decrypted), the
    rest (large objects, tables the manifest does not checksum) always. When the restore fails or a table differs,
    every file is hashed, to name a damaged one."""

    def __init__(self, entry: Entry, files: list[str]):
        self.entry = entry
        self.files = files
        self.started: set[str] = set()
        self.problems: list[str] = []
        self.error: BaseException | None = None
        self.thread = None

    def start(self, files: list[str]) -> None:
        import threading

        self.started = set(files)
        if files:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def _check(self, files: set[str], jobs: int) -> list[str]:
        recorded = self.entry.manifest["files"]  # and any table-data file that is not part of the backup
        return check_files(self.entry, jobs=jobs,
                           only=lambda rel: is_table_data(rel) and (rel in files or rel not in recorded))

    def _run(self) -> None:
        try:
            self.problems = self._check(self.started, jobs=1)
        except BaseException as e:  # noqa: BLE001 - raised by raise_problems
            self.error = e

    def raise_problems(self, live: str, every: bool = False) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            raise self.error
        if every and not self.problems:
            self.problems = self._check(set(self.files) - self.started, jobs=4)
        if self.problems:
            raise CheckFailed(f"backup {self.entry.id} failed its checksums: {self.problems[0]} (the restored copy is "
                              f"dropped; the live database {live} was not touched)", details="\n".join(self.problems))


def _swap(admin: PgTarget, d: dict[str, Any], timeout: float = 15.0) -> None:
    import time

    import psycopg
    from psycopg import sql

    deadline = time.monotonic() + timeout
    with admin.connect(timeout=10, autocommit=True) as c:
        while True:
            # the live database's sessions (the app is stopped); the rename itself stops autovacuum workers
            kept = pgb.end_sessions(c, [d["name"], d["scratch"]] if d["exists"] else [d["scratch"]])
            try:
                with c.transaction():  # both renames or neither
                    if d["exists"]:
                        c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(d["name"]), sql.Identifier(d["previous"])))
                        c.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                            sql.Identifier(d["previous"]), sql.Literal(previous.marker(d["name"], d.get("backup")))))
                    c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(d["scratch"]), sql.Identifier(d["name"])))
                return
            except psycopg.errors.ObjectInUse as e:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                err = e
            except psycopg.Error as e:
                err = e
            break
    if isinstance(err, psycopg.errors.ObjectInUse) and kept:
        err = f"sessions this role may not end are still open: {', '.join(kept)}"
    raise OpsError(
        f"could not switch {d['name']} to the restored database: {str(err).strip().splitlines()[0]}",
        hint=f"{d['name']} is unchanged; the restored copy is the database {d['scratch']} (rename it by hand, "
             "or drop it and rerun)")
