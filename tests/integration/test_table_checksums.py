"""Per-table checksums (backup.postgres) against a real PostgreSQL: every method handles every column type, tells
each changed value (and a value moved to another column) from the original, and survives a dump and restore into
another database, where enums, types and collations have new OIDs."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest

from aixsss_ops import sysbin
from aixsss_ops.backup import postgres as pgb
from aixsss_ops.dburl import parse_database_url

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN short_text AS varchar(20);
CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE every_type (
    id int PRIMARY KEY, b bool, i2 int2, i8 int8, n numeric, f4 real, f8 float8, t text, t2 text, vc varchar(10),
    bp char(3), nm name, u uuid, d date, ts timestamp(3), tz timestamptz, iv interval, tm time, ip inet, j json,
    jb jsonb, p point, e mood, ea mood[], ia int[], ta text[], raw bytea, m money, bt bit(3), vb varbit,
    dom short_text, r int4range, ci text COLLATE nocase
);
INSERT INTO every_type VALUES
    (1, true, 2, 3, 4.5, 1.25, 2.5, 'alpha', 'beta', 'vc', 'abc', 'nm', '6f1c8f5e-8d0b-4b8e-9d7e-1c2b3a4d5e6f',
     '2026-01-02', '2026-01-02 03:04:05.678', '2026-01-02 03:04:05+02', '1 day 2 hours', '10:11:12', '10.0.0.1',
     '{"a": [1, 2]}', '{"b": {"c": null}}', '(1.5,2.5)', 'ok', '{sad,happy}', '{1,2,3}', '{x,"y z"}', '\\x00ff',
     12.34, B'101', B'11', 'domain', '[1,10)', 'Foo'),
    (2, false, -2, -3, -4.5, -1.25, -2.5, 'gamma', 'delta', 'vc2', 'xyz', 'nm2', '00000000-0000-0000-0000-000000000001',
     '1999-12-31', '1999-12-31 23:59:59.999', '1999-12-31 23:59:59+00', '-3 minutes', '00:00:00', '::1',
     '[]', '[]', '(0,0)', 'sad', '{}', '{}', '{}', '\\x', 0, B'000', B'', '', 'empty', 'bar'),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""

CHANGES = [  # (column, new value for row 1): each must change every method's checksum
    ("b", "false"), ("i2", "7"), ("i8", "NULL"), ("n", "4.50001"), ("f4", "1.5"), ("f8", "NULL"), ("t", "'alphA'"),
    ("vc", "'vC'"), ("bp", "'abd'"), ("nm", "'nn'"), ("u", "NULL"), ("d", "'2026-01-03'"),
    ("ts", "'2026-01-02 03:04:05.679'"), ("tz", "'2026-01-02 03:04:05+03'"), ("iv", "'1 day 3 hours'"),
    ("tm", "'10:11:13'"), ("ip", "'10.0.0.2'"), ("j", "'{\"a\": [1, 3]}'"), ("jb", "'{\"b\": {\"c\": 1}}'"),
    ("p", "'(1.5,2.6)'"), ("e", "'happy'"), ("ea", "'{sad}'"), ("ia", "'{1,2}'"), ("ta", "'{x,y}'"),
    ("raw", "'\\x00fe'"), ("m", "12.35"), ("bt", "B'100'"), ("vb", "B'1'"), ("dom", "'Domain'"), ("r", "'[1,11)'"),
    ("ci", "'foo'"),  # equal under the column's collation, not the same value
    ("t", "NULL"), ("t2", "'alpha'"),
]


def _sums(url: str) -> dict[str, pgb.TableSum]:
    with parse_database_url(url).connect() as c:
        pgb.stable_session(c)
        return {m: pgb.table_sum(c, "public", "every_type", m) for m in pgb.METHODS}


@pytest.fixture
def typed_db(database_url):
    with psycopg.connect(database_url.split("?")[0], autocommit=True) as c:
        c.execute(SCHEMA)
    return database_url


def test_every_method_sums_every_column_type_and_tells_each_change(typed_db):
    base = _sums(typed_db)
    assert all(s.rows == 3 for s in base.values())
    assert len({s.checksum for s in base.values()}) == 3, "the methods are different functions"
    with parse_database_url(typed_db).connect() as c:
        pgb.stable_session(c)
        for col, value in CHANGES:
            with c.transaction(force_rollback=True):
                c.execute(f"UPDATE every_type SET {col} = {value} WHERE id = 1")
                for m in pgb.METHODS:
                    assert pgb.table_sum(c, "public", "every_type", m).checksum != base[m].checksum, (col, m)
        with c.transaction(force_rollback=True):  # the same two values in each other's column
            c.execute("UPDATE every_type SET t = t2, t2 = t WHERE id = 1")
            for m in pgb.METHODS:
                assert pgb.table_sum(c, "public", "every_type", m).checksum != base[m].checksum, ("swap", m)
    assert _sums(typed_db) == base


def test_checksums_survive_a_dump_and_restore_into_another_database(pg_server, typed_db):
    copy = pg_server.create_database()
    source, target = parse_database_url(typed_db), parse_database_url(pg_server.url(copy))
    src, env = pgb.conninfo_and_env(source)
    dst, _ = pgb.conninfo_and_env(target)
    dump = subprocess.run([sysbin.find("pg_dump"), "--format=custom", f"--dbname={src}"], env={**os.environ, **env},
                          capture_output=True, check=True).stdout
    with parse_database_url(pg_server.url(copy)).connect(autocommit=True) as c:
        c.execute("CREATE TYPE decoy AS ENUM ('x')")  # the restored enum gets other OIDs than in the source
    subprocess.run([sysbin.find("pg_restore"), "--no-owner", f"--dbname={dst}"], input=dump, env={**os.environ, **env},
                   capture_output=True, check=True)
    assert _sums(pg_server.url(copy)) == _sums(typed_db)


def test_an_unknown_method_is_named(typed_db):
    with parse_database_url(typed_db).connect() as c, pytest.raises(pgb.OpsError, match="method 'blake9'"):
        pgb.table_sum(c, "public", "every_type", "blake9")
