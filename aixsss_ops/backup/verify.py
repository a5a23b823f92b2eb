"""``backup verify``: every file against its SHA-256; with ``--restore``, a restore into a scratch database
compared table by table (row count and checksum) with the manifest, and every recorded object version checked."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aixsss_ops.backup import crypt, disk, objects
from aixsss_ops.backup import manifest as mf
from aixsss_ops.backup import postgres as pgb
from aixsss_ops.backup.catalog import Catalog, Entry
from aixsss_ops.backup.scratch import drop_orphans, held
from aixsss_ops.dburl import PgTarget
from aixsss_ops.errors import CheckFailed, OpsError, UsageError
from aixsss_ops.fsutil import read_json


def is_table_data(rel: str) -> bool:
    """A file of the dump that holds only table (or large-object) data, which pg_restore streams into COPY: nothing
    in it is ever executed. The TOC (every statement pg_restore runs) and the files outside ``db/`` are not."""
    name = rel.rsplit("/", 1)[-1]
    return rel.startswith(mf.DB_DIR + "/") and not name.startswith(("toc.dat", "blobs")) and ".dat" in name


def check_files(entry: Entry, on_file: Callable[[str], None] | None = None, jobs: int = 4,
                only: Callable[[str], bool] | None = None) -> list[str]:
    """Mismatches of the stored files against the manifest (missing, altered, truncated, unexpected); ``only``
    limits the check to the files it accepts."""
    from concurrent.futures import ThreadPoolExecutor

    files = {rel: want for rel, want in entry.manifest["files"].items() if only is None or only(rel)}

    def check(item: tuple[str, dict]) -> str | None:
        rel, want = item
        p = entry.path / rel
        if not p.is_file():
            return f"{rel}: missing"
        digest, size = mf.sha256_file(p)
        if on_file:
            on_file(rel)
        if size != want["size"]:
            return f"{rel}: size {size} differs from the recorded {want['size']} (truncated or altered)"
        if digest != want["sha256"]:
            return f"{rel}: SHA-256 mismatch (altered)"
        return None

    with ThreadPoolExecutor(max(1, jobs)) as pool:  # hashlib releases the GIL: files hash in parallel
        problems = [p for p in pool.map(check, sorted(files.items())) if p]
    db_dir = entry.path / mf.DB_DIR
    if db_dir.is_dir():
        for p in sorted(db_dir.iterdir()):
            rel = str(p.relative_to(entry.path))
            if rel not in entry.manifest["files"] and (only is None or only(rel)):
                problems.append(f"{rel}: not part of the backup (unexpected file)")
    return problems


def require_key(entry: Entry, key: bytes | None, env_name: str) -> bytes | None:
    enc = entry.manifest.get("encryption")
    if not enc:
        return None
    if key is None:
        raise UsageError(f"backup {entry.id} is encrypted: set {env_name} to its key")
    if crypt.key_fingerprint(key) != enc["key_fingerprint"]:
        raise CheckFailed(f"wrong encryption key for backup {entry.id}: the key in {env_name} has fingerprint "
                          f"{crypt.key_fingerprint(key)}, the backup was encrypted with {enc['key_fingerprint']}")
    return key


def materialize(entry: Entry, key: bytes | None, workdir: Path) -> Path:
    """The dump directory pg_restore can read: the backup's own, or a decrypted copy under ``workdir``."""
    if not entry.manifest.get("encryption"):
        return entry.path / mf.DB_DIR
    out = workdir / mf.DB_DIR
    out.mkdir(parents=True, exist_ok=True)
    for rel in entry.manifest["files"]:
        if rel.startswith(mf.DB_DIR + "/") and rel.endswith(".enc"):
            crypt.decrypt_file(entry.path / rel, out / Path(rel).name[: -len(".enc")], key, name=rel)
    return out


def read_objects(entry: Entry, key: bytes | None) -> dict[str, Any] | None:
    import json

    if not entry.manifest.get("objects"):
        return None
    plain = entry.path / mf.OBJECTS
    if entry.manifest.get("encryption"):  # decrypted in memory: no plaintext copy on disk for a kill to leave
        data = json.loads(crypt.decrypt_bytes(entry.path / (mf.OBJECTS + ".enc"), key, name=mf.OBJECTS + ".enc"))
    else:
        data = json.loads(plain.read_text())
    if objects.ObjectSnapshot(data["bucket"], data["at"], data["objects"]).checksum != entry.manifest["objects"]["checksum"]:
        raise CheckFailed(f"{mf.OBJECTS}: object manifest checksum mismatch (altered)")
    return data


def methods_of(entry: Entry) -> dict[str, str]:
    return {n: t.get("method", "text") for n, t in entry.manifest["tables"].items()}


def compare_tables(expected: dict[str, dict], actual: dict[str, pgb.TableSum]) -> list[str]:
    problems = []
    for name, want in sorted(expected.items()):
        got = actual.get(name)
        if got is None:
            problems.append(f"table {name}: missing after restore")
        elif got.rows != want["rows"]:
            problems.append(f"table {name}: {got.rows} rows after restore, {want['rows']} in the backup")
        elif got.method != "rows" and got.checksum != want["checksum"]:
            problems.append(f"table {name}: checksum differs from the backup's ({got.rows} rows)")
    for name in sorted(set(actual) - set(expected)):
        problems.append(f"table {name}: present after restore but not in the backup")
    return problems


def manifest_status(entry: Entry, key: bytes | None, key_env: str) -> str:
    """"authenticated", "unauthenticated" or "not checked" (see :func:`manifest.authenticate`); CheckFailed when
    the manifest does not match its MAC."""
    import json

    try:
        signature = read_json(entry.path / mf.SIGNATURE)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckFailed(f"{entry.id}/{mf.SIGNATURE}: not valid JSON (altered)") from None
    return mf.authenticate(entry.manifest, signature, key, key_env, entry.id)


_PROGRESS = re.compile(r"^pg_restore: (processing|launching|finished|creating|executing|connecting|entering|"
                       r"restoring|setting|dropping|implied) ")


def table_items(entry: Entry, dump_dir: Path) -> dict[int, tuple[str, str]]:
    """{dump id: (schema, table)} of the dump's TABLE DATA items of the tables the manifest checksums; the data of
    item N is the file ``N.dat[.gz]`` of the dump directory."""
    pg_restore, _ = pgb.tool_major("pg_restore")
    listing = pgb.run(pgb.list_argv(pg_restore, dump_dir), {}, "pg_restore --list", timeout=600).stdout
    return pgb.table_data_items(listing, list(entry.manifest["tables"]))


def dump_id(rel: str) -> int | None:
    head = rel.rsplit("/", 1)[-1].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def restore_database(entry: Entry, dump_dir: Path, base: PgTarget, name: str, jobs: int, *,
                     no_owner: bool = False, phase: Callable[[str], None] | None = None,
                     early_jobs: int | None = None, items: dict[int, tuple[str, str]] | None = None,
                     checksums: bool = True) -> tuple[PgTarget, dict[str, pgb.TableSum]]:
    """Create ``name`` (it must not exist), pg_restore the dump into it and checksum every table (each one as soon
    as pg_restore has loaded it: :class:`postgres.TableSummer`), or without ``checksums`` only take the rows each
    table received (:func:`postgres.loaded_rows`); the database is dropped again on failure.
    ``items``: :func:`table_items` of the dump, when the caller has them already."""
    admin = pgb.admin_target(base)
    if pgb.database_exists(admin, name):
        raise UsageError(f"database {name} already exists")
    owner = None if no_owner else entry.manifest["database"].get("owner")
    if owner and not pgb.role_exists(admin, owner):
        owner = None
    pg_restore, _ = pgb.tool_major("pg_restore")
    if jobs <= 1 or not checksums:  # only parallel pg_restore reports finished items: summed at the end
        items = {}
    elif items is None:
        items = table_items(entry, dump_dir)
    pgb.create_database(admin, name, owner)
    target = pgb.target_for(base, name)
    conninfo, env = pgb.conninfo_and_env(target)
    # while pg_restore runs, half the connections checksum (it needs the cores for the critical path); all of
    # them once it is done
    summer = pgb.TableSummer(target, jobs, methods_of(entry), early_jobs or max(1, jobs // 2)) if checksums else None

    def on_line(line: str) -> None:
        item = pgb.finished_item(line)
        if item is not None and item in items and summer is not None:
            summer.add(*items[item])

    try:
        proc = pgb.Background(pgb.restore_argv(pg_restore, conninfo, dump_dir, jobs, verbose=bool(items),
                                               no_owner=no_owner), {**env, "LC_ALL": "C"}, on_line)
        try:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            raise
        if rc != 0:
            err = "\n".join(ln for ln in proc.lines if not _PROGRESS.match(ln))  # --verbose's progress left out
            if disk.says_no_space(err):
                raise disk.server_full(name, "pg_restore was loading the backup", "the scratch database is dropped, "
                                       "the live database was not touched", details=err[-4000:])
            raise OpsError(f"pg_restore into {name} failed (exit {rc}): {pgb.last_error(err)}", details=err[-4000:])
        if phase:
            phase("comparing row counts" + (" and checksums" if checksums else "") + " with the manifest")
        sums = summer.finish() if summer is not None else pgb.loaded_rows(target)
    except BaseException:
        if summer is not None:
            summer.abort()
        pgb.drop_database(admin, name)
        raise
    return target, sums


@dataclass
class VerifyResult:
    id: str
    files_checked: int
    problems: list[str] = field(default_factory=list)
    restored: bool = False
    tables_compared: int = 0
    objects_checked: int = 0
    manifest: str = "unauthenticated"  # authenticated | unauthenticated | not checked
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ok": self.ok, "files_checked": self.files_checked, "restored": self.restored,
                "tables_compared": self.tables_compared, "objects_checked": self.objects_checked,
                "manifest": self.manifest, "notes": self.notes, "problems": self.problems}


def verify_backup(catalog: Catalog, entry: Entry, *, key: bytes | None, key_env: str, restore: bool = False,
                  pg: PgTarget | None = None, s3: objects.S3Target | None = None, jobs: int = 1,
                  phase: Callable[[str], None] | None = None, allow_unchecked: bool = False) -> VerifyResult:
    """Refuses (CheckFailed, exit 3, nothing recorded) a signed manifest when ``key`` is None, unless
    ``allow_unchecked``: then it checks the checksums only and notes that the signature was not checked."""
    say = phase or (lambda _m: None)
    res = VerifyResult(entry.id, len(entry.manifest["files"]))
    if entry.manifest.get("encryption") and (key is not None or restore):
        require_key(entry, key, key_env)  # a wrong or missing key is named as such, not as a manifest mismatch
    try:
        res.manifest = manifest_status(entry, key, key_env)
    except CheckFailed as e:
        res.problems.append(e.message)
    if res.manifest == "not checked" and not allow_unchecked:
        # a signed manifest is only as good as its signature: checksums alone pass a manifest rewritten to match
        fp = (read_json(entry.path / mf.SIGNATURE) or {}).get("key_fingerprint")
        raise CheckFailed(f"backup {entry.id}: its manifest is signed (backup key fingerprint {fp}) but {key_env} is "
                          "not set: the signature cannot be checked, so the backup is not verified",
                          hint=f"set {key_env} to the backup key the backup was taken with")
    if res.manifest == "unauthenticated":
        res.notes.append("the manifest is unauthenticated (no backup key when it was taken): checksums only, which "
                         "catch damage but not someone who rewrites the manifest too")
    elif res.manifest == "not checked":
        res.notes.append(f"the manifest is signed but {key_env} is not set: its signature was not checked")
    say("checking file checksums")
    res.problems += check_files(entry)
    if restore and not res.problems:
        if pg is None:
            raise UsageError("verify --restore needs a PostgreSQL server (--database-url or the embedded stack)")
        role, may = pgb.may_create_databases(pgb.admin_target(pg))
        if not may:
            raise pgb.no_createdb(role, "verify --restore loads the backup into a scratch database")
        key = require_key(entry, key, key_env)
        scratch = f"aixsss_verify_{secrets.token_hex(6)}"
        with catalog.work_dir("verify", entry.id) as work:  # a killed run's is removed by the next one
            try:
                missing = missing_roles(entry, key, pgb.admin_target(pg))
                if missing:
                    res.notes.append(f"role(s) {', '.join(missing)} of the backup do not exist on this server: the "
                                     "scratch restore leaves ownership and grants out (`backup restore` creates them)")
                try:
                    dump_dir = materialize(entry, key, work)
                except OSError as e:
                    if disk.is_no_space(e):
                        raise disk.full(catalog.root, "decrypting the dump for pg_restore",
                                        "the scratch copy was removed") from None
                    raise
                admin = pgb.admin_target(pg)
                for name in drop_orphans(admin):
                    say(f"dropped {name}, the scratch database of a killed run")
                say(f"restoring into the scratch database {scratch}")
                with held(admin, scratch):
                    _target, sums = restore_database(entry, dump_dir, pg, scratch, jobs, no_owner=bool(missing),
                                                     phase=say)
                    try:
                        res.problems += compare_tables(entry.manifest["tables"], sums)
                        res.tables_compared = len(entry.manifest["tables"])
                    finally:
                        pgb.drop_database(admin, scratch)
            except CheckFailed as e:
                res.problems.append(e.message)
        res.restored = True
        snap = read_objects(entry, key) if entry.manifest.get("objects") else None
        if snap is not None:
            if s3 is None:
                raise UsageError("verify --restore of a backup with objects needs the S3 store")
            say("checking the recorded object versions")
            res.problems += objects.verify_versions(s3, snap)
            res.objects_checked = len(snap["objects"])
    try:
        catalog.update_meta(entry, verify={"at": mf.iso(mf.utcnow()), "ok": res.ok, "restore": restore,
                                           "manifest": res.manifest, "problems": res.problems[:20]})
    except OSError as e:
        raise OpsError(f"cannot record the verification of {entry.id}: {e.strerror}") from None
    return res


def read_globals(entry: Entry, key: bytes | None) -> str | None:
    """The backup's ``globals.sql`` (decrypted in memory when the backup is encrypted); None when it has none."""
    enc = bool(entry.manifest.get("encryption"))
    rel = mf.GLOBALS + (".enc" if enc else "")
    if rel not in entry.manifest["files"]:
        return None
    if not enc:
        return (entry.path / rel).read_text(encoding="utf-8")
    return crypt.decrypt_bytes(entry.path / rel, key, name=rel).decode("utf-8")


def missing_roles(entry: Entry, key: bytes | None, admin: PgTarget) -> list[str]:
    """Roles ``globals.sql`` creates that the server lacks."""
    from aixsss_ops.backup import roles

    text = read_globals(entry, key)
    if text is None:
        return []
    return roles.plan_roles(text, roles.existing_roles(admin)).create
