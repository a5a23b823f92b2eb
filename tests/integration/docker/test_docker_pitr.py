"""Point-in-time recovery (backup.pitr) on the docker runtime: pgBackRest inside the Postgres container (real
PostgreSQL, real pgBackRest 2.45 of the base image), its repository the ``<project>-pgbackrest`` volume, real
SeaweedFS versions, through the CLI.

Rows and objects at T1, more at T2, deleted and overwritten at T3; ``restore --to-time T1`` gives exactly T1's data
(table checksums, object digests) on a cluster restored into a new folder of the pgdata volume, the old one kept;
a time before the oldest base backup is refused with the window; doctor's PITR checks pass after a base backup.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime, timedelta

import psycopg
import pytest

from aixsss_ops.backup.pitr_sites import ContainerSite
from aixsss_ops.config import load_config
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.runtime import docker_specs as specs
from tests.cli import EXE, REPO, run_cli
from tests.conftest import poll
from tests.integration.backup_helpers import instant, objects_state, pitr_history, table_dump
from tests.integration.docker.conftest import docker_config, purge
from tests.integration.docker.test_docker_stack import containers

DB = "pitrtest"
DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 30.0, "lock_timeout": 60.0, "backup": False}


class Stack:
    def __init__(self, cfg_path, project: str):
        self.cfg_path, self.project = cfg_path, project
        self.cfg = load_config(cfg_path)
        self.dep = Deployment(self.cfg)
        self.url = self.dep.embedded_admin_url(DB)
        self.bucket = self.dep.bucket
        self.client = self.dep.s3.client()

    def cli(self, *args, **kw):
        return run_cli(*args, config=self.cfg_path, **kw)

    def pg(self, database: str = DB):
        return psycopg.connect(self.dep.embedded_admin_url(database).split("?")[0], autocommit=True)

    def state(self) -> tuple[dict, dict]:
        return table_dump(self.url), objects_state(self.client, self.bucket)

    def in_postgres(self, *argv: str) -> tuple[int, str]:
        c = containers(self.project)["postgres"]
        r = c.exec_run(list(argv), user="postgres")
        return r.exit_code, r.output.decode(errors="replace")


@pytest.fixture(scope="module")
def stack(docker_images):
    cfg, project = docker_config("aixsss-dpitr-", backup={"pitr": True, "rpo_seconds": 5}, deploy=DEPLOY)
    s = Stack(cfg, project)
    try:
        r = s.cli("stack", "up", timeout=300)
        assert r.code == 0, r.output
        yield s
    finally:
        run_cli("stack", "down", config=cfg, timeout=240)
        purge(project)
        shutil.rmtree(cfg.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def history(stack):
    """A base backup, then T1, T2, T3 with their exact data."""
    return pitr_history(stack, DB)


def test_pgbackrest_runs_in_the_postgres_container_with_its_repository_in_a_volume(stack, history):
    c = containers(stack.project)["postgres"]
    mounts = {m["Destination"]: m.get("Name") for m in c.attrs["Mounts"]}
    assert mounts[specs.PGBACKREST] == f"{stack.project}-pgbackrest"
    code, out = stack.in_postgres("stat", "-c", "%a %U", specs.PGBACKREST_CONF)
    assert (code, out.strip()) == (0, "600 postgres")
    code, out = stack.in_postgres("psql", "-tAc", "SHOW archive_command")
    assert code == 0 and "pgbackrest" in out and f"--stanza={stack.project}" in out
    assert history["base"]["backup"]["type"] == "full"


def test_doctor_pitr_checks_pass_after_a_base_backup(stack, history):
    r = stack.cli("--json", "doctor", "--only", "backup.pitr-archiving", "--only", "backup.pitr-wal", "--only",
                  "backup.pitr-base", "--only", "backup.pitr-lifecycle", "--timeout", "30", timeout=120)
    found = {f["check"]: f for f in r.json["findings"]}
    assert {k: f["status"] for k, f in found.items() if k != "backup.pitr-space"} == {
        "backup.pitr-archiving": "ok", "backup.pitr-wal": "ok", "backup.pitr-base": "ok",
        "backup.pitr-lifecycle": "ok"}, r.output
    space = found["backup.pitr-space"]  # the repository volume's file system: the host's disk (warn when < 10%)
    assert space["status"] in ("ok", "warn") and f"volume {stack.project}-pgbackrest" in space["message"], r.output


def test_restore_to_t1_gives_exactly_the_data_of_t1(stack, history):
    r = stack.cli("--json", "--yes", "restore", "--to-time", history["t1"].isoformat(), "--dry-run", timeout=120)
    assert r.code == 0, r.output
    plan = r.json["plan"]
    assert plan["base_backup"]["label"] == history["base"]["backup"]["label"]
    assert (plan["objects"]["copy"], plan["objects"]["delete_marker"]) == (2, 1), plan
    assert stack.state() == history["s3"]  # a dry run changes nothing

    r = stack.cli("--json", "--yes", "restore", "--to-time", history["t1"].isoformat(), timeout=300)
    assert r.code == 0, r.output
    res = r.json
    rp = datetime.fromisoformat(res["recovery_point"].replace("Z", "+00:00"))
    assert rp <= history["t1"] and history["t1"] - rp < timedelta(seconds=5), res
    assert stack.state() == history["s1"]
    kept = res["kept_data_dir"]
    assert kept.startswith(f"{specs.PG_HOME}/data.pre_pitr_")
    assert stack.in_postgres("test", "-s", f"{kept}/PG_VERSION")[0] == 0  # the old cluster stays in the volume
    status = {u["unit"]: u["state"] for u in stack.cli("--json", "stack", "status").json["services"]}
    assert status["api-blue"] == "RUNNING" and status["postgres"] == "RUNNING"
    r = stack.cli("--json", "doctor", "--only", "backup.pitr-archiving", "--timeout", "30", timeout=120)
    assert {f["check"]: f["status"] for f in r.json["findings"]} == {"backup.pitr-archiving": "ok"}, r.output


def test_restore_to_t2_follows_the_timeline_live_at_t2(stack, history):
    """After the T1 restore began a new timeline, T2 is still reached on the first one."""
    r = stack.cli("--json", "--yes", "restore", "--to-time", history["t2"].isoformat(), timeout=300)
    assert r.code == 0, r.output
    rp = datetime.fromisoformat(r.json["recovery_point"].replace("Z", "+00:00"))
    assert history["t1"] < rp <= history["t2"]
    assert stack.state() == history["s2"]


def test_a_killed_restore_leaves_the_live_cluster_usable_and_a_rerun_finishes(stack, history):
    """The CLI killed while pgBackRest restores in the container (an exec'd process outlives its client): the live
    cluster keeps running; the rerun stops the leftover restore, removes its folder and restores."""
    with stack.pg() as c:
        c.execute("CREATE TABLE killed (id int)")
        c.execute("INSERT INTO killed VALUES (1)")
    t = instant()
    with stack.pg() as c:
        c.execute("INSERT INTO killed VALUES (2)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    p = subprocess.Popen([EXE, "--config", str(stack.cfg_path), "--yes", "restore", "--to-time", t.isoformat()],
                         cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pid_file = f"{specs.PG_HOME}/{ContainerSite.PIDFILE}"
    poll(lambda: stack.in_postgres("test", "-s", pid_file)[0] == 0, timeout=60, interval=0.05,
         what="the restore running in the container")
    p.kill()
    p.wait(30)
    with stack.pg() as c:  # the live cluster was never stopped
        assert c.execute("SELECT count(*) FROM killed").fetchone()[0] == 2
    journal = json.loads((stack.cfg.state / "postgres" / "pitr-restore.json").read_text())
    r = stack.cli("--json", "--yes", "restore", "--to-time", t.isoformat(), timeout=300)
    assert r.code == 0, r.output
    code, out = stack.in_postgres("sh", "-c", f"ls -d {specs.PG_HOME}/data.pitr-* 2>/dev/null; "
                                  "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done")
    assert journal["new"] not in out and " restore " not in out, out
    with stack.pg() as c:
        assert c.execute("SELECT count(*) FROM killed").fetchone()[0] == 1


def test_a_time_before_the_oldest_base_backup_is_refused_with_the_window(stack, history):
    started = datetime.fromisoformat(history["base"]["backup"]["started_at"].replace("Z", "+00:00"))
    r = stack.cli("--yes", "restore", "--to-time", (started - timedelta(minutes=5)).isoformat())
    assert r.code == 2, r.output
    assert "outside the point-in-time recovery window" in r.output
    assert history["base"]["backup"]["stopped_at"][:19] in r.output


def test_a_restore_stopped_by_its_abort_event_leaves_no_process_of_it_in_the_container(stack, history):
    """What a failing check beside the restore does on this runtime: the exec'd pgBackRest restore (its client cannot
    stop it) is stopped with every process of it before ``run`` raises, and what it leaves is reaped by the
    container's init, not by Postgres (which would take an orphan killed by a signal for a crash of its own): a
    session opened before lives on."""
    import threading
    from pathlib import PurePosixPath

    from aixsss_ops.errors import OpsError
    from aixsss_ops.usecases import pitr as pitr_uc

    eng = pitr_uc.engine(Deployment(load_config(stack.cfg_path)))  # one made after `stack up`
    into = PurePosixPath(specs.PG_HOME) / "data.pitr-aborted.partial"
    eng.site.mkdir(into)

    def restoring() -> str:
        return stack.in_postgres("sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done")[1]

    abort, seen = threading.Event(), []

    def watch() -> None:  # the abort comes once pgBackRest runs in the container, as a failing check's would
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen:
            if f"--pg1-path={into} " in restoring():
                seen.append(time.monotonic())
        abort.set()

    watcher = threading.Thread(target=watch)
    with stack.pg() as session:
        pid = session.execute("SELECT pg_backend_pid()").fetchone()[0]
        watcher.start()
        try:
            with pytest.raises(OpsError, match="pgbackrest restore stopped"):
                eng.restore(into, history["base"]["backup"]["label"], history["t1"], None, abort)
            watcher.join()
            assert seen, "the restore never showed in the container"
            assert f"--pg1-path={into} " not in restoring()
            assert session.execute("SELECT pg_backend_pid()").fetchone()[0] == pid  # no crash recovery
        finally:
            abort.set()
            watcher.join()
            eng.site.rmtree(into)
