"""The key engine's modules against real PostgreSQL: the id-range readers and the verification after a pass."""

from __future__ import annotations

import pytest

from aixsss_ops import crypto
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.poll import poll_until
from tests.integration.keys_helpers import insert_profiles, make_deployment

OLD = crypto.generate_key()


@pytest.fixture
def dep(pg_server, redis_server, queue_name):
    return make_deployment(pg_server, redis_server, queue_name)


def test_the_id_ranges_cover_every_row_once_in_id_order_with_its_version(dep):
    """``read_bounds`` starts a range every ``batch`` rows; reading the ranges with ``copy_out`` gives every row once,
    in id order, as COPY text (escapes and NULLs included) with the xmin of its version."""
    from aixsss_ops.keys import copy_codec, ranges

    insert_profiles(dep, OLD, 23)
    with dep.connect() as c:  # an id COPY has to escape, and one NULL column
        c.execute("""INSERT INTO "AIProfile" ("id", "teamId", "name", "provider", "model", "apiKeyEncrypted",
                     "updatedAt") VALUES (%s, 't', 'x', 'openai_compatible', 'm', %s, now())""",
                  ("p000010\ttab\\slash", crypto.encrypt("v", crypto.derive_key(OLD))))
        expected = c.execute('SELECT "id", xmin::text, "apiKeyEncrypted", "imageApiKeyEncrypted", '
                             '"videoApiKeyEncrypted" FROM "AIProfile" ORDER BY "id"').fetchall()
    target = parse_database_url(dep.database_url)
    with target.connect(autocommit=False) as conn:
        bounds = list(ranges.read_bounds(conn, 5))
        assert bounds == [r[0] for r in expected[5::5]]
        read = []
        for lo, hi in zip([None, *bounds], [*bounds, None], strict=True):
            lines = b"".join(ranges.copy_out(conn, lo=lo, hi=hi, xmin=True)).decode().split("\n")[:-1]
            assert 0 < len(lines) <= 5
            read += [tuple(copy_codec.decode_field(f) for f in ln.split("\t")) for ln in lines]
    assert read == expected


def test_the_verification_after_a_pass_counts_what_it_wrote_and_decrypts_the_rest(dep, monkeypatch):
    """After a pass the server counts the row versions its batches wrote and only the other rows are decrypted; with
    more unwritten rows than STRAY_ROWS the ranges are read one by one instead. Both give the same answer, and
    neither trusts a row changed after its batch wrote it."""
    from aixsss_ops.keys import engine

    insert_profiles(dep, OLD, 450)
    new_raw, third = crypto.generate_key(), crypto.generate_key()
    old, new = crypto.derive_key(OLD), crypto.derive_key(new_raw)
    with engine.Engine(parse_database_url(dep.database_url), [old, new], batch=100) as eng:
        assert eng.scan((0, 1), reseal=(0, 1)).bad == 0
        eng.reencrypt(0, 1)
        assert len(set(eng.written.values())) == 5
        clean = eng.scan((1, 0))
        assert (clean.rows, clean.by_key, clean.bad, clean.straggler_ids) == (450, [0, clean.values], 0, [])
        with dep.connect() as c:  # written after the pass: one value in the old key, one in a key of neither
            c.execute('UPDATE "AIProfile" SET "apiKeyEncrypted" = %s WHERE "id" = %s',
                      (crypto.encrypt("late", old), "p000007"))
            c.execute('UPDATE "AIProfile" SET "videoApiKeyEncrypted" = %s WHERE "id" = %s',
                      (crypto.encrypt("x", crypto.derive_key(third)), "p000301"))
        counted = eng.scan((1, 0))
        monkeypatch.setattr(engine, "STRAY_ROWS", 0)
        by_ranges = eng.scan((1, 0))
    for res in (counted, by_ranges):
        assert (res.rows, res.values, res.nulls) == (clean.rows, clean.values, clean.nulls)
        assert res.by_key == [1, clean.values - 2] and res.neither == 1 and res.malformed == 0
        assert sorted(res.straggler_ids) == ["p000007", "p000301"]
        assert [(e.row_id, e.column) for e in res.errors] == [("p000301", "videoApiKeyEncrypted")]


def test_a_batch_returns_its_xid_only_when_its_compare_and_set_wrote_a_row(dep):
    """``Engine._write`` returns, from the UPDATE's own round trip, the xid of the batch's transaction (the xmin of
    the row versions it wrote), or None when every row changed after it was read (nothing written)."""
    from aixsss_ops.keys import engine
    from aixsss_ops.keys.pool import verify_update

    insert_profiles(dep, OLD, 10)
    old, new = crypto.derive_key(OLD), crypto.derive_key(crypto.generate_key())
    with engine.Engine(parse_database_url(dep.database_url), [old, new], batch=100) as eng:
        assert eng.scan((0, 1), reseal=(0, 1)).bad == 0
        stale = eng.memo[0]
        conn = eng._conn()

        def verified(c):  # the check's sealed values opened with the new key, as reencrypt does before a write
            return eng.pool.submit(verify_update, c.update, 1) if c.unverified else None

        try:
            with dep.connect() as c:  # every row gets a new version after the read
                c.execute('UPDATE "AIProfile" SET "name" = "name"')
            assert eng._write(conn, stale, verified(stale)) is None
            assert eng.scan((0, 1), reseal=(0, 1)).by_key[0] > 0
            xid = eng._write(conn, eng.memo[0], verified(eng.memo[0]))
            with dep.connect() as c:
                assert {r[0] for r in c.execute('SELECT xmin::text FROM "AIProfile"')} == {xid}
        finally:
            conn.close()


def _row_locked(dep, rid: str) -> bool:
    """Whether another transaction holds the row lock of profile ``rid`` (asked without waiting)."""
    import psycopg

    with dep.connect() as c:
        try:
            c.execute('SELECT 1 FROM "AIProfile" WHERE "id" = %s FOR UPDATE NOWAIT', (rid,))
        except psycopg.errors.LockNotAvailable:
            return True
        finally:
            c.rollback()
    return False


def test_a_check_writes_its_batches_ahead_and_nothing_is_seen_before_the_pass_commits_them(dep):
    """With ``stage`` the check's batches are written while it runs, on the writer connections, uncommitted: the rows
    are locked, other sessions still read every value in the old key, and the pass then commits them (one
    transaction per writer) instead of writing them again."""
    from aixsss_ops.keys import engine

    plain = insert_profiles(dep, OLD, 600)
    new_raw = crypto.generate_key()
    old, new = crypto.derive_key(OLD), crypto.derive_key(new_raw)
    before = dep.values()
    with engine.Engine(parse_database_url(dep.database_url), [old, new], batch=100) as eng:
        check = eng.scan((0, 1), reseal=(0, 1), stage=True)
        assert check.bad == 0 and len(eng.memo) == 6
        assert dep.values() == before  # nothing visible yet
        # the first and the last batch (the writes ahead run on while the scan returns)
        assert poll_until(lambda: _row_locked(dep, "p000005") and _row_locked(dep, "p000555"), 10)
        batches: list[str] = []
        written = eng.reencrypt(0, 1, on_batch=lambda b, last: batches.append(last))
        assert (written.rows, written.reencrypted, written.batches) == (600, check.by_key[0], 6)
        assert batches == sorted(batches) and len(batches) == 6  # reported in id order
        assert len(set(eng.written.values())) == engine.WRITERS  # one transaction per writer, each range's xid
        assert not _row_locked(dep, "p000005")
        final = eng.scan((1, 0))
    assert (final.bad, final.by_key, final.straggler_ids) == (0, [0, check.by_key[0]], [])
    assert dep.plaintexts(new_raw) == plain


def test_a_check_that_finds_a_bad_value_after_writing_ahead_rolls_all_of_it_back(dep, monkeypatch):
    """A value of neither key in the last range: the batches the check had already written ahead are rolled back, no
    row stays locked, the table is exactly as it was and no memo is left for a pass."""
    from aixsss_ops.keys import engine, staging

    insert_profiles(dep, OLD, 600)
    third = crypto.derive_key(crypto.generate_key())
    with dep.connect() as c:
        c.execute('UPDATE "AIProfile" SET "imageApiKeyEncrypted" = %s WHERE "id" = %s',
                  (crypto.encrypt("x", third), "p000577"))
    before = dep.values()
    wrote: list[int] = []

    class Watched(staging.Staging):  # records how many batches were written (uncommitted) before the rollback
        def rollback(self):
            wrote.append(sum(1 for _c, _lane, f in self._staged if f.result() is not None))
            super().rollback()

    monkeypatch.setattr(engine, "Staging", Watched)
    old, new = crypto.derive_key(OLD), crypto.derive_key(crypto.generate_key())
    with engine.Engine(parse_database_url(dep.database_url), [old, new], batch=100) as eng:
        check = eng.scan((0, 1), reseal=(0, 1), stage=True)
        assert check.bad == 1 and [(e.row_id, e.column) for e in check.errors] == [
            ("p000577", "imageApiKeyEncrypted")]
        assert wrote and wrote[0] >= 1  # batches had been written ahead, then rolled back
        assert not _row_locked(dep, "p000005")
        assert dep.values() == before and eng.memo == []
