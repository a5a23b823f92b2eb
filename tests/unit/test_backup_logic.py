"""Pure logic of backups: encryption format, object snapshot at T, clock check, retention, argv building."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aixsss_ops.backup import crypt, objects
from aixsss_ops.backup import manifest as mf
from aixsss_ops.backup import postgres as pgb
from aixsss_ops.backup.catalog import Catalog, Entry
from aixsss_ops.backup.prune import Policy, plan_prune
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.errors import CheckFailed, UsageError

KEY = crypt.load_key("k" * 40, "test")


@pytest.mark.parametrize("size", [0, 1, crypt.CHUNK - 1, crypt.CHUNK, crypt.CHUNK + 1, 3 * crypt.CHUNK])
def test_encrypted_files_round_trip(tmp_path: Path, size: int):
    data = os.urandom(size)
    (tmp_path / "p").write_bytes(data)
    digest, n = crypt.encrypt_file(tmp_path / "p", tmp_path / "e", KEY)
    assert (digest, n) == mf.sha256_file(tmp_path / "e")
    crypt.decrypt_file(tmp_path / "e", tmp_path / "d", KEY)
    assert (tmp_path / "d").read_bytes() == data


def _three_chunks(tmp_path: Path) -> bytes:
    (tmp_path / "p").write_bytes(os.urandom(2 * crypt.CHUNK + 10))
    crypt.encrypt_file(tmp_path / "p", tmp_path / "e", KEY)
    return (tmp_path / "e").read_bytes()


def test_wrong_key_altered_byte_truncation_and_reordering_are_all_refused(tmp_path: Path):
    enc = _three_chunks(tmp_path)
    hdr, c = 17, crypt.CHUNK + crypt.TAG
    chunks = [enc[hdr:hdr + c], enc[hdr + c:hdr + 2 * c], enc[hdr + 2 * c:]]
    flipped = bytearray(enc)
    flipped[hdr + 5] ^= 1
    cases = {
        "wrong key": (enc, crypt.load_key("z" * 40, "test")),
        "altered byte": (bytes(flipped), KEY),
        "truncated at a chunk boundary": (enc[: hdr + 2 * c], KEY),
        "chunks swapped": (enc[:hdr] + chunks[1] + chunks[0] + chunks[2], KEY),
        "appended chunk": (enc + chunks[0], KEY),
    }
    for name, (blob, key) in cases.items():
        (tmp_path / "bad").write_bytes(blob)
        with pytest.raises(crypt.DecryptError):
            crypt.decrypt_file(tmp_path / "bad", tmp_path / "out", key)
        assert not (tmp_path / "out").exists(), name  # no partial plaintext left behind


def test_a_short_key_is_refused():
    with pytest.raises(UsageError):
        crypt.load_key("short", "$X")
    with pytest.raises(UsageError):
        crypt.load_key(None, "$X")


T = datetime(2025, 1, 1, 12, 0, 0, 5000, tzinfo=UTC)


def _v(key, vid, seconds, dm=False, latest=False):
    return objects.Version(key, vid, T.replace(microsecond=0) + timedelta(seconds=seconds), latest, dm,
                           None if dm else f"etag-{vid}", None if dm else 1)


def test_object_snapshot_takes_the_newest_version_at_or_before_t():
    versions = [
        # per key newest first, as the server lists them
        _v("a", "a3", +1, latest=True), _v("a", "a2", -1), _v("a", "a1", -5),  # overwritten after T
        _v("b", "b2", -2, dm=True, latest=True), _v("b", "b1", -3),  # deleted before T: absent
        _v("c", "c2", +3, dm=True, latest=True), _v("c", "c1", -3),  # deleted after T: present
        _v("d", "d1", +2, latest=True),  # created after T: absent
        _v("e", "e2", -1, latest=True), _v("e", "e1", -1),  # same second: the server's order decides
        _v("f", "f1", 0, latest=True),  # in T's own second: cannot be proved <= T at 1 s resolution
    ]
    snap = objects.snapshot_at(versions, "bkt", T)
    assert [(o["key"], o["version_id"]) for o in snap.objects] == [("a", "a2"), ("c", "c1"), ("e", "e2")]
    assert snap.resolution_s == 1.0


def test_millisecond_stores_compare_exactly():
    v = objects.Version("k", "v1", T - timedelta(milliseconds=3), True, False, "e", 1)
    late = objects.Version("k", "v2", T + timedelta(milliseconds=3), True, False, "e", 1)
    assert [o["version_id"] for o in objects.snapshot_at([v], "b", T).objects] == ["v1"]
    assert objects.snapshot_at([late, v], "b", T).objects[0]["version_id"] == "v1"


def test_clock_check_allows_two_seconds_and_refuses_more():
    pg = datetime(2025, 1, 1, 12, 0, 0, 400000, tzinfo=UTC)
    assert objects.check_clock(pg.replace(microsecond=0), pg, pg) == 0.0  # Date header truncates to the second
    assert objects.check_clock(pg.replace(microsecond=0) + timedelta(seconds=2), pg, pg) <= 2.0
    with pytest.raises(CheckFailed, match="differ by"):
        objects.check_clock(pg + timedelta(seconds=4), pg, pg)
    with pytest.raises(CheckFailed):
        objects.check_clock(pg - timedelta(seconds=4), pg, pg)


def _entry(bid: str, at: datetime, keep=False, verified=None) -> Entry:
    meta = {"keep": keep}
    if verified is not None:
        meta["verify"] = {"ok": verified}
    return Entry(bid, Path("/nonexistent") / bid, "complete", {"created_at": mf.iso(at), "files": {}}, meta)


def test_retention_last_daily_weekly_keep_and_newest_verified():
    now = datetime(2025, 3, 31, 22, 0, tzinfo=UTC)  # a Monday
    # two backups a day for 30 days
    entries = [_entry(f"b{d:02d}{h}", now - timedelta(days=d, hours=h * 6)) for d in range(30) for h in (0, 1)]
    entries.append(Entry("broken", Path("/x"), "incomplete"))
    plan = plan_prune(entries, Policy(keep_last=3, keep_daily=5, keep_weekly=3))
    kept = set(plan.keep)
    assert {"b000", "b001", "b010"} <= kept  # last 3
    assert {f"b{d:02d}0" for d in range(5)} <= kept  # newest of each of the last 5 days
    # weekly: this ISO week -> b000 (Mon 31st), last week -> b010 (Sun 30th), the week before -> b080 (Sun 23rd)
    assert kept == {"b000", "b001", "b010", "b020", "b030", "b040", "b080"}
    assert plan.keep["b010"] == ["last", "daily", "weekly"]
    assert "broken" not in kept and "broken" not in plan.delete and plan.incomplete == ["broken"]

    old_keep = _entry("old-keep", now - timedelta(days=200), keep=True)
    old_verified = _entry("old-verified", now - timedelta(days=100), verified=True)
    older_verified = _entry("older-verified", now - timedelta(days=150), verified=True)
    plan = plan_prune([*entries, old_keep, old_verified, older_verified], Policy(1, 0, 0))
    assert plan.keep == {"b000": ["last"], "old-keep": ["marked keep"], "old-verified": ["newest verified"]}
    assert "older-verified" in plan.delete


def test_weekly_keeps_the_newest_backup_of_each_iso_week():
    monday = datetime(2025, 3, 3, 9, tzinfo=UTC)
    entries = [_entry(f"w{i}", monday + timedelta(days=i)) for i in range(14)]  # two ISO weeks
    plan = plan_prune(entries, Policy(0, 0, 2))
    assert sorted(plan.keep) == ["w13", "w6"]


def test_catalog_ignores_dirs_without_a_valid_manifest(tmp_path: Path):
    cat = Catalog(tmp_path)
    (tmp_path / "20250101T000000Z-aaaa").mkdir()
    (tmp_path / "20250101T000000Z-aaaa" / "manifest.json").write_text("{not json")
    later, lock = cat.begin("20250101T000001Z-bbbb")
    assert [(e.id, e.status) for e in cat.entries()] == [("20250101T000000Z-aaaa", "invalid"),
                                                          ("20250101T000001Z-bbbb", "in-progress")]
    assert cat.cleanup() == []  # a live run's lock is held
    lock.release()
    assert cat.cleanup() == ["20250101T000001Z-bbbb.partial"]
    with pytest.raises(UsageError):
        cat.get("nope")
    with pytest.raises(CheckFailed):
        cat.get("20250101T000000Z-aaaa")


def test_catalog_orders_by_manifest_time_not_by_name(tmp_path: Path):
    cat = Catalog(tmp_path)
    for bid, at in (("zzz", "2025-01-01T00:00:00Z"), ("aaa", "2025-02-01T00:00:00Z")):
        p, lock = cat.begin(bid)
        cat.finish(p, lock, {"format": mf.FORMAT, "id": bid, "created_at": at, "files": {}, "database": {}})
    assert [e.id for e in cat.entries()] == ["zzz", "aaa"]
    assert cat.get("latest").id == "aaa"


def test_pg_dump_argv_is_a_list_with_no_password():
    target = parse_database_url("postgresql://app:s3cr%40t@db.example:5433/aixsss?schema=public&sslmode=require")
    conninfo, env = pgb.conninfo_and_env(target)
    assert "s3cr" not in conninfo and env["PGPASSWORD"] == "s3cr@t"
    argv = pgb.dump_argv("/usr/bin/pg_dump", conninfo, Path("/b/db"), 4, "00000003-1", 1)
    assert argv == ["/usr/bin/pg_dump", "--format=directory", "--jobs=4", "--compress=1", "--file=/b/db",
                    "--no-password", "--snapshot=00000003-1",
                    "--dbname=postgresql://app@db.example:5433/aixsss?sslmode=require"]


def test_an_older_pg_dump_than_the_server_is_refused():
    with pytest.raises(CheckFailed, match="must be >= the server's major version"):
        pgb.check_versions(99_0001, "pg_dump")
    assert pgb.check_versions(13_0000, "pg_dump")[1] >= 13


# -- globals.sql --

GLOBALS = """--
-- PostgreSQL database cluster dump
--

\\restrict AbC123

SET default_transaction_read_only = off;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

CREATE ROLE "App Reader";
ALTER ROLE "App Reader" WITH NOSUPERUSER INHERIT NOCREATEROLE LOGIN PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy';
CREATE ROLE grp;
ALTER ROLE grp WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
COMMENT ON ROLE grp IS 'multi
line; with -- no comment';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$x';
ALTER ROLE "App Reader" SET search_path TO 'a;b', 'public';
GRANT grp TO "App Reader" GRANTED BY postgres;
GRANT pg_read_all_data TO postgres GRANTED BY postgres;
GRANT SET ON PARAMETER work_mem TO grp;
CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';

\\unrestrict AbC123

--
-- PostgreSQL database cluster dump complete
--
"""


def test_globals_are_split_into_statements_with_quotes_comments_and_meta_commands_honoured():
    from aixsss_ops.backup.roles import split_statements

    stmts = split_statements(GLOBALS)
    assert not any(s.startswith("\\") or "restrict" in s for s in stmts)
    assert "COMMENT ON ROLE grp IS 'multi\nline; with -- no comment'" in stmts
    assert "ALTER ROLE \"App Reader\" SET search_path TO 'a;b', 'public'" in stmts
    assert len(stmts) == 15


def test_only_missing_roles_are_created_and_existing_ones_never_changed():
    from aixsss_ops.backup.roles import plan_roles

    plan = plan_roles(GLOBALS, existing={"postgres", "grp", "pg_read_all_data"})
    assert plan.create == ["App Reader"] and plan.logins == ["App Reader"]
    assert plan.existing == ["grp", "postgres"]
    sqls = [s.sql for s in plan.statements]
    assert not any("ALTER ROLE postgres" in s or "ALTER ROLE grp" in s or "COMMENT ON ROLE grp" in s for s in sqls)
    assert 'GRANT grp TO "App Reader" GRANTED BY postgres' in sqls  # the new role's membership
    assert "GRANT pg_read_all_data TO postgres GRANTED BY postgres" not in sqls  # two existing roles: untouched
    assert "GRANT SET ON PARAMETER work_mem TO grp" not in sqls
    assert plan.skipped == ["CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast'"]
    everything = plan_roles(GLOBALS, existing={"pg_read_all_data"})
    assert everything.create == ["App Reader", "grp", "postgres"]
    assert "GRANT SET ON PARAMETER work_mem TO grp" in [s.sql for s in everything.statements]


# -- the databases restores keep --


def test_cleanup_keeps_the_newest_restore_and_what_is_younger_than_the_retention():
    from aixsss_ops.backup.previous import Kept, _parse, marker, plan_cleanup

    now = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    kept = [Kept(f"app_pre_restore_{d}", "app", now - timedelta(days=d), None, 1) for d in (30, 8, 2, 1)]
    plan = plan_cleanup(kept, "app", 7, now=now)
    assert [k.name for k in plan.drop] == ["app_pre_restore_30", "app_pre_restore_8"]
    assert set(plan.keep) == {"app_pre_restore_2", "app_pre_restore_1"} and "newest" in plan.keep["app_pre_restore_1"]
    assert [k.name for k in plan_cleanup(kept, "app", 0, now=now).drop] == [k.name for k in kept[:3]]
    assert len(plan_cleanup(kept, "app", 0, include_newest=True, now=now).drop) == 4
    assert plan_cleanup([], "app", 7).drop == []
    # the comment is authoritative; a bare name is read too (databases kept before the comment existed)
    assert _parse("whatever", marker("app", "b1", now))[:2] == ("app", now)
    assert _parse("app_pre_restore_20250101T000000Z", None)[:2] == ("app", datetime(2025, 1, 1, tzinfo=UTC))
    assert _parse("app_pre_restore_20250101T000000Z_3f", None)[0] == "app"
    assert _parse("app_restoring_abc", None) is None


# -- the manifest's MAC --


def test_manifest_mac_detects_any_change_and_names_a_wrong_key():
    m = {"format": 1, "id": "x", "created_at": "2025-01-01T00:00:00Z", "files": {"db/toc.dat": {"sha256": "ab"}},
         "database": {"name": "d"}, "duration_s": 1.5}
    sig = mf.sign(m, KEY)
    assert KEY.hex() not in str(sig) and sig["algorithm"] == "HMAC-SHA256"
    assert mf.authenticate(m, sig, KEY, "$K", "b") == "authenticated"
    assert mf.authenticate(m, sig, None, "$K", "b") == "not checked"
    assert mf.authenticate(m, None, KEY, "$K", "b") == "unauthenticated"
    reordered = dict(reversed(list(m.items())))  # another spelling of the same JSON still verifies
    assert mf.authenticate(reordered, sig, KEY, "$K", "b") == "authenticated"
    altered = {**m, "files": {"db/toc.dat": {"sha256": "ac"}}}
    with pytest.raises(CheckFailed, match="manifest.json: authentication failed"):
        mf.authenticate(altered, sig, KEY, "$K", "b")
    with pytest.raises(CheckFailed, match="another backup key"):
        mf.authenticate(m, sig, crypt.load_key("z" * 40, "test"), "$K", "b")
    with pytest.raises(CheckFailed, match="manifest.hmac"):  # an encrypted backup is always signed
        mf.authenticate({**m, "encryption": {"algorithm": "x"}}, None, KEY, "$K", "b")
    assert mf.mac_key(KEY) != KEY


# -- pg_restore's output --


def test_table_data_items_and_finished_lines_of_pg_restore():
    listing = """;
; Archive created at 2025-01-01 00:00:00 UTC
3358; 0 16390 TABLE DATA public AIJob postgres
3359; 0 16398 TABLE DATA public Scene postgres
3360; 0 16400 TABLE DATA public my table postgres
3361; 0 16401 TABLE DATA other Scene app owner
215; 1259 16390 TABLE public AIJob postgres
"""
    items = pgb.table_data_items(listing, ["public.AIJob", "public.Scene", "public.my table", "other.Scene"])
    assert items == {3358: ("public", "AIJob"), 3359: ("public", "Scene"), 3360: ("public", "my table"),
                     3361: ("other", "Scene")}
    assert pgb.finished_item("pg_restore: finished item 3359 TABLE DATA Scene") == 3359
    assert pgb.finished_item("pg_restore: finished item 3213 CONSTRAINT Scene Scene_pkey") is None
    assert pgb.finished_item("pg_restore: launching item 3359 TABLE DATA Scene") is None


def test_last_error_prefers_the_error_line_over_a_table_called_error():
    err = ("pg_restore: finished item 12 TABLE DATA ErrorLog\n"
           "pg_restore: error: could not execute query: ERROR:  role \"x\" does not exist\nCommand was: ALTER …")
    assert pgb.last_error(err) == 'pg_restore: error: could not execute query: ERROR:  role "x" does not exist'


def test_a_full_disk_is_recognised_in_errors_and_tool_messages():
    import errno

    from aixsss_ops.backup import disk

    assert disk.is_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert disk.is_no_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not disk.is_no_space(OSError(errno.EACCES, "Permission denied"))
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as wrapped:
        assert disk.is_no_space(wrapped)
    assert disk.says_no_space("pg_dump: error: could not write to output file: No space left on device")
    assert disk.says_no_space('ERROR:  could not extend file "base/1/2": No space left on device')
    assert not disk.says_no_space("pg_dump: error: connection refused")
