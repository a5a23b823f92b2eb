"""Point-in-time recovery across timelines and gaps, on one embedded stack (real PostgreSQL, pgBackRest, SeaweedFS):
a base backup taken on a timeline a restore abandoned is not chosen for a T on the new timeline; two restores back
to back both succeed; an archived segment missing from the repository moves the window and refuses a T that needs
it (exit 2), and doctor fails naming it.
"""

from __future__ import annotations

import shutil
from datetime import datetime

import pytest

from tests.conftest import poll, state_tmpdir
from tests.integration.backup_helpers import instant
from tests.integration.test_pitr import DB, Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    s = Stack(state_tmpdir("aixsss-pitrtl-"))
    r = s.cli("stack", "up", timeout=240)
    assert r.code == 0, r.output
    try:
        with s.pg("postgres") as c:
            c.execute(f"CREATE DATABASE {DB}")
        with s.pg() as c:
            c.execute("CREATE TABLE g (tag text PRIMARY KEY)")
        yield s
    finally:
        r = s.cli("stack", "down", timeout=180)
        if r.code == 0:
            shutil.rmtree(s.root, ignore_errors=True)


def _write(stack, *tags: str) -> None:
    with stack.pg() as c:
        for tag in tags:
            c.execute("INSERT INTO g VALUES (%s)", (tag,))


def _tags(stack) -> set[str]:
    with stack.pg() as c:
        return {r[0] for r in c.execute("SELECT tag FROM g")}


def _timeline(stack) -> int:
    """The live cluster's timeline."""
    with stack.pg() as c:
        return int(c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0][:8], 16)


def _restore(stack, t: datetime | str, *extra):
    when = t if isinstance(t, str) else t.isoformat()
    return stack.cli("--json", "--yes", "restore", "--to-time", when, "--db-only", *extra, timeout=600)


def _base(stack, *extra) -> dict:
    r = stack.cli("--json", "backup", "base", *extra, timeout=600)
    assert r.code == 0, r.output
    return r.json["backup"]


def test_a_base_backup_of_an_abandoned_timeline_is_not_chosen(stack):
    """base, G1, T1, G2, full base (timeline 1), restore to T1 (timeline 2 leaves timeline 1 before that full
    backup ended), G3, T3, G4: the restore to T3 replays from the first base backup, not the second, and gives
    exactly T3's rows; a restore right after it (back to back) succeeds too."""
    first = _base(stack)
    _write(stack, "G1")
    t1 = instant()
    _write(stack, "G2")
    second = _base(stack, "--type", "full")
    assert second["label"] != first["label"]
    r = _restore(stack, t1)
    assert r.code == 0, r.output
    assert _tags(stack) == {"G1"} and _timeline(stack) == 2
    _write(stack, "G3")
    t3 = instant()
    _write(stack, "G4")
    r = _restore(stack, t3, "--dry-run")
    assert r.code == 0, r.output
    assert r.json["plan"]["base_backup"]["label"] == first["label"], r.json
    r = _restore(stack, t3)
    assert r.code == 0, r.output
    assert r.json["base_backup"] == first["label"] and r.json["timeline"] == 2, r.json
    assert _tags(stack) == {"G1", "G3"}

    _write(stack, "G5")
    r = _restore(stack, "-0s")  # right after the previous restore: its timeline's history may not be archived yet
    assert r.code == 0, r.output
    assert r.json["timeline"] == 3 and _tags(stack) == {"G1", "G3", "G5"}, r.json


def _archived_segment(stack) -> str:
    """The current WAL segment, switched and waited for until it is archived."""
    with stack.pg() as c:
        seg = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        c.execute("SELECT pg_switch_wal()")
        poll(lambda: c.execute("SELECT last_archived_wal >= %s FROM pg_stat_archiver", (seg,)).fetchone()[0],
             timeout=60, interval=0.2, what=f"{seg} archived")
    return seg


def test_a_segment_missing_from_the_archive_moves_the_window_and_refuses_a_t_behind_it(stack):
    """A base backup, then a segment holding T archived and deleted from the repository, then another base backup:
    the window starts at the second one (`backup list` names the missing segment), a T in the gap is refused with
    exit 2 and the window, doctor's backup.pitr-wal fails naming it, and a T after the second backup still plans."""
    _base(stack)
    _write(stack, "W1")
    _archived_segment(stack)
    _write(stack, "W2")
    t_in = instant()
    _write(stack, "W3")
    gone = _archived_segment(stack)
    _write(stack, "W4")
    _archived_segment(stack)
    repo = stack.cfg.backup_dir / ".pgbackrest" / "archive" / stack.cfg.project
    files = list(repo.glob(f"*/{gone[:16]}/{gone}-*"))
    assert len(files) == 1, files
    files[0].unlink()
    after = _base(stack)
    _write(stack, "W5")
    t_after = instant()

    r = stack.cli("--json", "backup", "list")
    assert r.code == 0, r.output
    win = r.json["pitr"]["window"]
    assert win["from"] == after["stopped_at"] and win["wal_missing"] == gone, win

    r = _restore(stack, t_in, "--dry-run")
    assert r.code == 2, r.output
    assert gone in r.json["error"] and after["stopped_at"] in r.json["error"], r.json

    r = stack.cli("--json", "doctor", "--only", "backup.pitr-wal", "--timeout", "20")
    found = {f["check"]: f for f in r.json["findings"]}
    assert r.code == 3 and found["backup.pitr-wal"]["status"] == "fail", r.output
    assert gone in found["backup.pitr-wal"]["message"], r.output

    r = _restore(stack, t_after, "--dry-run")
    assert r.code == 0, r.output
    assert r.json["plan"]["base_backup"]["label"] == after["label"]

