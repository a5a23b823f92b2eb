"""Point-in-time recovery's edges on a whole embedded stack (real PostgreSQL, pgBackRest, SeaweedFS; the repository
on a file system of its own, a tmpfs, so that it can be filled): `backup base` holds the deploy lock, doctor names
the action a killed holder left in the lock note, `backup list` fails on a repository pgBackRest cannot read (and
doctor says so rather than send to stanza-create), and a full repository file system is a failure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.cli import REPO
from tests.conftest import poll, state_tmpdir
from tests.integration.test_pitr import Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    root = state_tmpdir("aixsss-pitr-small-")
    backups = root / "backups"
    backups.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m,mode=0755", "tmpfs", str(backups)], check=True)
    try:
        s = Stack(root)
        r = s.cli("stack", "up", timeout=240)
        assert r.code == 0, r.output
        try:
            yield s
        finally:
            s.cli("stack", "down", timeout=180)
    finally:
        subprocess.run(["umount", "-l", str(backups)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _note(stack) -> dict:
    try:
        return json.loads((stack.dep.layout.deploy_dir / "deploy.lock.json").read_text())
    except (OSError, ValueError):
        return {}


def _holder(stack, action: str) -> subprocess.Popen:
    """Another process holding the deploy lock (the real lock: a flock and its note), as a running restore does."""
    code = ("import sys, time; from pathlib import Path; from aixsss_ops.deploy.lock import DeployLock; "
            "DeployLock(Path(sys.argv[1])).acquire(0, {'action': sys.argv[2]}); print('held', flush=True); "
            "time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(stack.dep.layout.deploy_dir), action], cwd=str(REPO),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _lock_finding(stack) -> dict:
    r = stack.cli("--json", "doctor", "--only", "deploy.state")
    return next(f for f in r.json["findings"] if f["check"] == "deploy.lock")


def test_doctor_on_a_fresh_stack_says_archiving_works_without_failing_the_wal_age(stack):
    """Right after `stack up` (nothing archived yet, or only what pitr-archiving's own `pgbackrest check` switches
    beside it): neither pitr check fails, and they do not contradict each other."""
    r = stack.cli("--json", "doctor", "--only", "backup.pitr-archiving", "--only", "backup.pitr-wal",
                  "--timeout", "30")
    found = {f["check"]: f for f in r.json["findings"]}
    assert found["backup.pitr-archiving"]["status"] == "ok", r.output
    assert found["backup.pitr-wal"]["status"] == "ok", r.output
    assert r.code == 0, r.output


def test_backup_base_and_a_restore_refuse_each_other_naming_the_holder(stack):
    with stack.pg("postgres") as c:  # enough data that the base backup runs for a while
        c.execute("CREATE TABLE big AS SELECT md5(i::text) || md5((i * 7)::text) AS v "
                  "FROM generate_series(1, 1500000) i")
    holder = _holder(stack, "restore --to-time 2026-01-01T00:00:00Z")
    try:
        assert _lock_finding(stack)["message"].startswith("a restore --to-time 2026-01-01T00:00:00Z holds the lock")
        r = stack.cli("backup", "base")
        assert r.code == 1 and "another operation holds the lock" in r.stderr, r.output
        assert "restore --to-time 2026-01-01T00:00:00Z" in r.stderr and "pgbackrest" not in r.stderr, r.output
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed restore leaves its note behind
        holder.wait(30)
    found = _lock_finding(stack)
    assert found["status"] == "warn" and found["message"].startswith(
        "a killed restore --to-time 2026-01-01T00:00:00Z left its lock note behind"), found
    assert stack.cli("deploy", "lock", "release").code == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    base = subprocess.Popen([sys.executable, "-m", "aixsss_ops", "--config", str(stack.cfg_path), "--json", "backup",
                             "base"], cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        poll(lambda: _note(stack).get("action") == "backup base --type full", timeout=60, interval=0.02,
             what="backup base's lock note")
        r = stack.cli("--yes", "restore", "--to-time", "-1s")
        assert base.poll() is None, "the base backup ended before the restore was refused"
        assert r.code == 1 and "another operation holds the lock" in r.stderr, r.output
        assert "(backup base --type full" in r.stderr, r.output
    finally:
        out, err = base.communicate(timeout=600)
    assert base.returncode == 0, out + err
    assert json.loads(out)["backup"]["type"] == "full"
    assert not _note(stack)  # released with the backup


def test_an_unreadable_repository_fails_backup_list_and_doctor_says_what_it_is(stack):
    r = stack.cli("backup", "create", "--no-objects")
    assert r.code == 0, r.output
    # the repository's own folder is made the postgres account's (0700) whenever pgBackRest's config is written: its
    # folders inside are what an operator's chmod or a restore of the folder as another user leaves unreadable
    folders = [stack.cfg.backup_dir / ".pgbackrest" / d for d in ("backup", "archive")]
    modes = [d.stat().st_mode for d in folders]
    for d in folders:
        os.chmod(d, 0)
    try:
        r = stack.cli("--json", "backup", "list")
        assert r.code == 1, r.output
        assert "the repository cannot be read" in r.json["pitr"]["error"], r.output
        assert len(r.json["backups"]) == 1  # the logical backups are listed all the same
        r = stack.cli("backup", "list")
        assert r.code == 1 and "error: point-in-time recovery: pgbackrest info: the repository cannot be read" \
            in r.stderr, r.output
        r = stack.cli("--json", "doctor", "--only", "backup.pitr-archiving", "--timeout", "30")
        [f] = r.json["findings"]
        assert f["status"] == "fail" and "the repository cannot be read" in f["message"], f
        assert "cannot read the repository" in f["fix"] and "stanza-create" not in f["fix"], f
    finally:
        for d, mode in zip(folders, modes, strict=True):
            os.chmod(d, mode)
    r = stack.cli("--json", "backup", "list")
    assert r.code == 0 and r.json["pitr"]["window"]["from"], r.output


def test_a_full_repository_file_system_is_a_failure(stack):
    def space() -> dict:
        r = stack.cli("--json", "doctor", "--only", "backup.pitr-lifecycle")
        return next(f for f in r.json["findings"] if f["check"] == "backup.pitr-space")

    assert space()["status"] == "ok"
    filler = stack.cfg.backup_dir / "filler"
    try:
        with open(filler, "wb", buffering=0) as f:
            chunk = b"\0" * (1 << 20)
            try:
                while True:
                    f.write(chunk)
                    f.flush()
            except OSError:
                pass
        found = space()
        assert found["status"] == "fail" and "0% free" in found["message"], found
    finally:
        filler.unlink(missing_ok=True)
    assert space()["status"] == "ok"
