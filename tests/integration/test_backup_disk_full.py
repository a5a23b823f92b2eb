"""A full disk during backup create, restore and verify, against real PostgreSQL and a real small filesystem.

The small filesystems are real: a tmpfs mounted with a size limit (the tests run as root; `mount -t tmpfs -o size=`),
so every ENOSPC below comes from the kernel, to pg_dump, to PostgreSQL or to this tool, never from a fake.
"""

from __future__ import annotations

import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.conftest import free_port, state_tmpdir, wait_accepting, wait_port
from tests.integration.backup_helpers import seed, table_dump
from tests.integration.test_backup import Env

KEY = {"AIXSSS_BACKUP_ENCRYPTION_KEY": "0123456789abcdef0123456789abcdef-backup"}


def _mount(path: Path, size_kb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a {size_kb} KB tmpfs at {path}: {r.stderr.strip()} (the full-disk tests need root "
                    "and the right to mount)")


def _resize(path: Path, size_kb: int) -> None:
    r = subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@contextmanager
def small_filesystem(path: Path, size_kb: int):
    """A real filesystem of ``size_kb`` at ``path`` for the duration of the block (unmounted after)."""
    _mount(path, size_kb)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _payload(url: str, rows: int) -> None:
    """One table of incompressible-ish text (md5 hex): its dump file is most of the backup."""
    with psycopg.connect(url.split("?")[0], autocommit=True) as c:
        c.execute(f"CREATE TABLE payload AS SELECT g AS id, md5(g::text) || md5(random()::text) || md5(random()::text) "
                  f"|| md5(random()::text) AS doc FROM generate_series(1, {rows}) g")


def _dump_bytes(env: Env, backup_id: str) -> int:
    return sum(p.stat().st_size for p in (env.dir / backup_id).rglob("*") if p.is_file())


def _databases(env: Env, like: str) -> list[str]:
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (like,)).fetchall()]


@pytest.fixture
def env(pg_server, s3_server):
    return Env(pg_server, s3_server, state_tmpdir("aixsss-bk-full-"))


def test_create_on_a_full_destination_fails_clearly_and_leaves_nothing(env):
    seed(env.url, rows=200)
    _payload(env.url, 60_000)  # ~8 MB of rows, ~4 MB gzipped
    with small_filesystem(env.dir, 1024):
        r = env.cli("--json", "backup", "create", "--no-objects")
        assert r.code == 1, r.output
        err = r.json["error"]
        assert "out of disk space" in err and str(env.dir) in err and "free of" in err, err
        assert "nothing is listed as complete" in err or "partial backup was removed" in err, err
        r = env.cli("backup", "create", "--no-objects")  # the human form names it too, on one line
        assert r.code == 1 and "out of disk space in " + str(env.dir) in r.stderr, r.output
        assert "internal error" not in r.stderr

        listed = env.cli("--json", "backup", "list")
        assert listed.code == 0 and [b for b in listed.json["backups"] if b["status"] == "complete"] == [], listed.output
        assert list(env.dir.iterdir()) == []  # the failed runs removed their partial directories themselves
        # space again: the next run succeeds and nothing of the failed runs is left over
        _resize(env.dir, 64 * 1024)
        done = env.create("--no-objects")
        assert [b["status"] for b in env.cli("--json", "backup", "list").json["backups"]] == ["complete"]
        assert sorted(p.name for p in env.dir.iterdir()) == [done["id"]]
        assert env.cli("backup", "verify", done["id"]).code == 0


def test_encrypting_on_a_full_destination_fails_in_our_own_writes(env, tmp_path):
    """The dump fits, its encrypted copy does not: ENOSPC in this tool's own writes, not pg_dump's."""
    seed(env.url, rows=200)
    _payload(env.url, 40_000)
    probe = env.create("--no-objects")  # how big the dump is, on the real disk
    size_kb = _dump_bytes(env, probe["id"]) // 1024
    shutil.rmtree(env.dir / probe["id"])
    with small_filesystem(env.dir, int(size_kb * 1.4) + 256):
        r = env.cli("--json", "backup", "create", "--no-objects", "--encrypt", env=KEY)
        assert r.code == 1, r.output
        err = r.json["error"]
        assert "out of disk space" in err and "while encrypting the files" in err and str(env.dir) in err, err
        assert KEY["AIXSSS_BACKUP_ENCRYPTION_KEY"] not in r.output
        assert [b for b in env.cli("--json", "backup", "list").json["backups"] if b["status"] == "complete"] == []
        assert [p.name for p in env.dir.iterdir() if p.name.endswith(".partial")] == []


def test_restore_without_scratch_space_leaves_the_live_database_untouched(env, tmp_path):
    """An encrypted backup is decrypted into backup.dir before pg_restore: no room there, no restore, and the live
    database is exactly as it was."""
    seed(env.url, rows=200)
    _payload(env.url, 40_000)
    b = env.create("--no-objects", "--encrypt", env=KEY)
    size_kb = _dump_bytes(env, b["id"]) // 1024
    keep = tmp_path / "kept"
    shutil.move(env.dir, keep)
    with psycopg.connect(env.url.split("?")[0], autocommit=True) as c:
        c.execute("DELETE FROM payload WHERE id % 2 = 0")
    live_before = table_dump(env.url)
    with small_filesystem(env.dir, int(size_kb * 1.3) + 256):
        shutil.copytree(keep / b["id"], env.dir / b["id"])
        for args in (("--yes", "restore", b["id"]), ("backup", "verify", b["id"], "--restore")):
            r = env.cli("--json", *args, env=KEY)
            assert r.code == 1, r.output
            err = r.json["error"]
            assert "out of disk space" in err and "decrypting the dump" in err and str(env.dir) in err, err
        assert "live database" in env.cli("--json", "--yes", "restore", b["id"], env=KEY).json["error"]
        assert not [p for p in env.dir.iterdir() if p.name.startswith((".restore-", ".verify-"))]
    assert table_dump(env.url) == live_before  # nothing half-restored
    assert _databases(env, f"{env.db}_restoring_%") == [] and _databases(env, "aixsss_verify_%") == []


@pytest.fixture
def small_pg(tmp_path):
    """A PostgreSQL cluster whose data directory is a 96 MB filesystem (its WAL on the real disk, so a full data
    directory is an ERROR for the statement that extends a file, not a PANIC)."""
    import os
    import secrets

    from aixsss_ops import sysbin
    from aixsss_ops.runtime.pg_cluster import Cluster, os_account
    from tests.conftest import PgServer

    root = state_tmpdir("aixsss-pg-small-")
    acct = os_account("postgres")
    data = root / "data"
    _mount(data, 96 * 1024)
    proc = log = None
    try:
        os.chown(data, acct.pw_uid, acct.pw_gid) if acct else None
        os.chmod(data, 0o700)
        wal = root / "wal"
        wal.mkdir()
        os.chown(wal, acct.pw_uid, acct.pw_gid) if acct else None
        password = secrets.token_urlsafe(16)
        pwfile = root / "pw"
        pwfile.write_text(password + "\n")
        os.chown(pwfile, acct.pw_uid, acct.pw_gid) if acct else None
        kw = {"user": acct.pw_uid, "group": acct.pw_gid, "extra_groups": []} if acct else {}
        r = subprocess.run([sysbin.find("initdb"), "-D", str(data), "--waldir", str(wal), "-U", "postgres",
                            "--pwfile", str(pwfile), "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
                           capture_output=True, text=True, **kw)
        assert r.returncode == 0, r.stderr
        cluster = Cluster(datadir=data, port=free_port(), host="127.0.0.1", os_user="postgres")
        log = open(root / "postgres.log", "wb")
        proc = subprocess.Popen(cluster.server_argv(), stdout=log, stderr=subprocess.STDOUT, **kw)
        wait_port(cluster.port)
        server = PgServer("127.0.0.1", cluster.port, "postgres", password)
        wait_accepting(server)
        server.data = data
        yield server
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        if log is not None:
            log.close()
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_restore_into_a_full_server_names_the_server_and_keeps_the_live_database(small_pg, s3_server):
    env = Env(small_pg, s3_server, state_tmpdir("aixsss-bk-full-"))
    seed(env.url, rows=200)
    _payload(env.url, 100_000)  # ~14 MB of heap: the cluster fits one copy, not two plus the scratch template
    b = env.create("--no-objects")
    free = shutil.disk_usage(small_pg.data).free
    with psycopg.connect(env.url.split("?")[0], autocommit=True) as c:
        c.execute("DELETE FROM payload WHERE id % 3 = 0")
        # fill the data directory until only a few MB are left: less than the restored copy needs
        c.execute("CREATE TABLE ballast (b text)")
        c.execute("ALTER TABLE ballast ALTER COLUMN b SET STORAGE EXTERNAL")
        while free > 18 * 2**20:
            c.execute("INSERT INTO ballast SELECT repeat(md5(random()::text), 30) FROM generate_series(1, 2000)")
            free = shutil.disk_usage(small_pg.data).free
        c.execute("CHECKPOINT")
    live_before = table_dump(env.url)
    r = env.cli("--json", "--yes", "restore", b["id"])
    assert r.code == 1, r.output
    err = r.json["error"]
    assert "PostgreSQL server ran out of disk space" in err and "live database was not touched" in err, err
    assert table_dump(env.url) == live_before
    with psycopg.connect(small_pg.url(schema=None), autocommit=True) as c:
        left = c.execute("SELECT datname FROM pg_database WHERE datname LIKE '%restoring%'").fetchall()
    assert left == []  # the scratch database was dropped again
