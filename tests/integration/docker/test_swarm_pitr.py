"""Point-in-time recovery (backup.pitr) on the swarm runtime, on a one-node swarm (the test engine): pgBackRest in the
Postgres service's replica (real PostgreSQL, real pgBackRest 2.45 of the base image), its repository the
``<project>-pgbackrest`` volume on the infra node, real SeaweedFS versions, through the CLI.

``stack up`` creates the stanza; rows and objects at T1, more at T2, deleted and overwritten at T3; ``restore
--to-time T1`` gives exactly T1's data (table checksums, object digests), the restored folder swapped in through
the pgdata volume by the replica Swarm starts; ``backup list`` shows the window, doctor's PITR checks pass; a config
that pins Postgres to another node than the engine's refuses every PITR command naming that node.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta

import docker
import psycopg
import pytest

from aixsss_ops.config import load_config
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.runtime import docker_specs as specs
from tests.cli import run_cli
from tests.conftest import poll
from tests.integration.backup_helpers import objects_state, pitr_history, table_dump
from tests.integration.docker.conftest import SOCK, purge_swarm, swarm_config

DB = "pitrtest"
DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 60.0, "lock_timeout": 60.0, "backup": False}
ELSEWHERE = "pitr-elsewhere-node"


class Stack:
    def __init__(self, cfg_path, project: str, up: dict):
        self.cfg_path, self.project, self.up = cfg_path, project, up
        self.cfg = load_config(cfg_path)
        self.dep = Deployment(self.cfg)
        self.url = self.dep.embedded_admin_url(DB)
        self.bucket = self.dep.bucket
        self.client = self.dep.s3.client()
        self.engine = docker.DockerClient(base_url=f"unix://{SOCK}", timeout=120)

    def cli(self, *args, config=None, **kw):
        return run_cli(*args, config=config or self.cfg_path, **kw)

    def pg(self, database: str = DB):
        return psycopg.connect(self.dep.embedded_admin_url(database).split("?")[0], autocommit=True)

    def state(self) -> tuple[dict, dict]:
        return table_dump(self.url), objects_state(self.client, self.bucket)

    def replica(self):
        """The running container of the Postgres service (on this one node)."""
        [c] = self.engine.containers.list(filters={"label": f"com.docker.swarm.service.name={self.project}-postgres",
                                                   "status": "running"})
        return c

    def in_postgres(self, *argv: str) -> tuple[int, str]:
        r = self.replica().exec_run(list(argv), user="postgres")
        return r.exit_code, r.output.decode(errors="replace")


@pytest.fixture(scope="module")
def stack(swarm_manager, docker_images):
    cfg, project = swarm_config("aixsss-swpitr-", swarm={"registry": "none"}, backup={"pitr": True, "rpo_seconds": 5},
                                deploy=DEPLOY)
    try:
        r = run_cli("--json", "stack", "up", config=cfg, timeout=600)
        assert r.code == 0, r.output
        yield Stack(cfg, project, r.json)
    finally:
        run_cli("stack", "down", config=cfg, timeout=240)
        purge_swarm(project)
        shutil.rmtree(cfg.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def history(stack):
    """A base backup, then T1, T2, T3 with their exact data."""
    return pitr_history(stack, DB)


def test_stack_up_creates_the_stanza_and_postgres_archives_from_its_replica(stack):
    assert f"created the pgBackRest stanza {stack.project}" in stack.up["actions"], stack.up
    svc = stack.engine.services.get(f"{stack.project}-postgres").attrs["Spec"]
    mounts = {m["Target"]: m["Source"] for m in svc["TaskTemplate"]["ContainerSpec"]["Mounts"]}
    assert mounts[specs.PGBACKREST] == f"{stack.project}-pgbackrest"
    secrets = [s["File"]["Name"] for s in svc["TaskTemplate"]["ContainerSpec"]["Secrets"]]
    assert "pgbackrest_conf" in secrets  # a Swarm secret, never the environment
    code, out = stack.in_postgres("stat", "-c", "%a %U", specs.PGBACKREST_CONF)
    assert (code, out.strip()) == (0, "600 postgres")
    code, out = stack.in_postgres("psql", "-tAc", "SHOW archive_command")
    assert code == 0 and "pgbackrest" in out and f"--stanza={stack.project}" in out


def test_backup_list_shows_the_window_and_doctor_pitr_checks_pass(stack, history):
    assert history["base"]["backup"]["type"] == "full"
    r = stack.cli("--json", "backup", "list", timeout=120)
    assert r.code == 0, r.output
    p = r.json["pitr"]
    assert p["window"]["from"] == history["base"]["backup"]["stopped_at"] and p["window"]["to"], p
    assert p["wal_segments"] > 0 and [b["label"] for b in p["base_backups"]] == [history["base"]["backup"]["label"]]
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

    before = stack.replica().id
    r = stack.cli("--json", "--yes", "restore", "--to-time", history["t1"].isoformat(), timeout=400)
    assert r.code == 0, r.output
    res = r.json
    rp = datetime.fromisoformat(res["recovery_point"].replace("Z", "+00:00"))
    assert rp <= history["t1"] and history["t1"] - rp < timedelta(seconds=5), res
    assert stack.state() == history["s1"]
    assert stack.replica().id != before  # Swarm started a new replica, which made the moves before Postgres
    kept = res["kept_data_dir"]
    assert kept.startswith(f"{specs.PG_HOME}/data.pre_pitr_")
    assert stack.in_postgres("test", "-s", f"{kept}/PG_VERSION")[0] == 0  # the old cluster stays in the volume
    assert stack.in_postgres("test", "-e", specs.PITR_SWAP)[0] == 1  # the moves were made, once
    assert "api-blue" in res["restarted"]
    # at once: Swarm may still report the new Postgres task "starting" (its health check runs every 5 s), though
    # Postgres answers
    r = stack.cli("--json", "doctor", "--only", "backup.pitr-archiving", "--timeout", "30", timeout=120)
    assert {f["check"]: f["status"] for f in r.json["findings"]} == {"backup.pitr-archiving": "ok"}, r.output

    def running() -> bool:
        status = {u["unit"]: u["state"] for u in stack.cli("--json", "stack", "status", timeout=120).json["services"]}
        return status["api-blue"] == "RUNNING" and status["postgres"] == "RUNNING"

    poll(running, timeout=60, interval=1, what="api-blue and postgres RUNNING after the restore")


def test_every_pitr_command_refuses_on_an_engine_whose_node_does_not_run_postgres(stack, history):
    """The same deployment with Postgres pinned to another node (swarm.infra_node): pgBackRest runs in the Postgres
    replica, which this engine cannot exec in; each command refuses in one line naming that node, changing nothing."""
    other = stack.cfg_path.with_name("ops-elsewhere.toml")
    other.write_text(stack.cfg_path.read_text() + f'infra_node = "{ELSEWHERE}"\n')  # [swarm] is the last table
    before = stack.state()
    for args, code in ((("backup", "base"), 2), (("restore", "--to-time", history["t2"].isoformat()), 2),
                       (("restore", "--to-time", history["t2"].isoformat(), "--dry-run"), 2)):
        r = stack.cli("--yes", *args, config=other, timeout=120)
        assert r.code == code, (args, r.output)
        said = [ln for ln in r.output.splitlines() if ELSEWHERE in ln]
        assert len(said) == 1 and f"run this command on {ELSEWHERE}" in said[0], (args, r.output)
    r = stack.cli("--json", "doctor", "--only", "backup.pitr-archiving", "--timeout", "30", config=other, timeout=120)
    assert r.code == 3, r.output
    [f] = r.json["findings"]
    assert f["status"] == "fail" and f"postgres runs on the swarm node {ELSEWHERE}" in f["message"], r.output
    r = stack.cli("--json", "backup", "list", config=other, timeout=120)  # the logical backups are listed all the same
    assert r.code == 2 and ELSEWHERE in r.json["pitr"]["error"] and "backups" in r.json, r.output
    assert stack.state() == before
    assert not (stack.cfg.state / "postgres" / "pitr-restore.json").exists()
