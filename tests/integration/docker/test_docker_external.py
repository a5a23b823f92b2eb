"""Managed infra (``postgres.external``, ``redis.external``, ``s3.external``) on the docker runtime and on a one-node
swarm.

A real PostgreSQL, Redis (with a password) and SeaweedFS started here stand for the managed services. They listen on
this host's address on the docker0 bridge (the gateway of the engine's ``bridge`` network), which this host and the
containers both reach (the session's own servers bind 127.0.0.1, which no container reaches). ``stack up`` must run
none of them, the app's containers must use them, and smoke, backups, key rotation and doctor must work against them
with nothing but the env files ``stack up`` wrote; a loopback address is refused before any container exists.
"""

from __future__ import annotations

import secrets
import subprocess
import time
import uuid
from dataclasses import dataclass

import docker
import httpx
import psycopg
import pytest
import redis

from aixsss_ops import envfile
from aixsss_ops.config import load_config
from aixsss_ops.s3 import S3Target
from tests.cli import Result, run_cli
from tests.conftest import PgServer, findings_not_ok, free_port, stack_config, state_tmpdir, wait_accepting
from tests.integration.docker.conftest import SOCK, docker_config, purge, purge_swarm, swarm_config

pytestmark = pytest.mark.slow

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 60.0, "lock_timeout": 60.0, "backup": False}
EMBEDDED = ("postgres", "redis", "s3")


def client() -> docker.DockerClient:
    return docker.DockerClient(base_url=f"unix://{SOCK}", timeout=120)


def bridge_gateway() -> str:
    """This host's address on the docker0 bridge: bound by the managed services, reached by every container."""
    return client().networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]


def wait_tcp(host: str, port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class Managed:
    """The 'managed' services: a PostgreSQL server, a Redis with a password, an S3 store, all at ``host``."""

    host: str
    pg: PgServer
    redis_password: str
    redis_port: int
    s3: S3Target

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@{self.host}:{self.redis_port}"

    def app_database(self) -> tuple[str, str, str]:
        """A fresh database owned by a role of its own (LOGIN CREATEDB, as a managed service's main user has):
        (database, role, password)."""
        db = f"ext_{uuid.uuid4().hex[:10]}"
        role = f"aixsss_{db}"
        password = secrets.token_urlsafe(18)
        with psycopg.connect(self.pg.url(schema=None), autocommit=True) as c:
            c.execute(f"CREATE ROLE \"{role}\" LOGIN CREATEDB PASSWORD '{password}'")
            c.execute(f'CREATE DATABASE "{db}" OWNER "{role}"')
        return db, role, password


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.fixture(scope="module")
def managed(docker_engine):
    from aixsss_ops import probes, sysbin
    from aixsss_ops.context.layout import Layout
    from aixsss_ops.runtime import local_specs
    from aixsss_ops.runtime.pg_cluster import Cluster, os_account

    host = bridge_gateway()
    root = state_tmpdir("aixsss-managed-")
    procs: list[subprocess.Popen] = []
    logs = []

    def log(name: str):
        logs.append(open(root / name, "wb"))
        return logs[-1]

    try:
        # PostgreSQL, run as the postgres account, accepting password logins from any address (the containers')
        pg_password = secrets.token_urlsafe(16)
        cluster = Cluster(datadir=root / "pg" / "data", port=free_port(), host=host, os_user="postgres")
        cluster.init("postgres", pg_password)
        with (cluster.datadir / "pg_hba.conf").open("a") as f:
            f.write("host all all 0.0.0.0/0 scram-sha-256\n")
        acct = os_account("postgres")
        kw = {"user": acct.pw_uid, "group": acct.pw_gid, "extra_groups": []} if acct else {}
        procs.append(subprocess.Popen(cluster.server_argv(), stdout=log("postgres.log"),
                                      stderr=subprocess.STDOUT, **kw))
        pg = PgServer(host, cluster.port, "postgres", pg_password)
        wait_tcp(host, pg.port)
        wait_accepting(pg)

        # Redis with a password and a memory ceiling (noeviction, AOF): what doctor asks of a queue's Redis
        redis_password = secrets.token_urlsafe(18)
        redis_port = free_port()
        (root / "redis").mkdir()
        procs.append(subprocess.Popen(
            [sysbin.find("redis-server"), "--port", str(redis_port), "--bind", host, "--dir", str(root / "redis"),
             "--requirepass", redis_password, "--appendonly", "yes", "--maxmemory", "64mb",
             "--maxmemory-policy", "noeviction", "--save", ""],
            stdout=log("redis.log"), stderr=subprocess.STDOUT))
        wait_tcp(host, redis_port)

        # SeaweedFS as the stack's own service definition, bound to the bridge address, strong unique keys
        s3_keys = {"access_key": f"AK{secrets.token_hex(8)}", "secret_key": secrets.token_urlsafe(24)}
        (root / "s3").mkdir()
        cfg_path = stack_config(root / "s3", s3=s3_keys)
        cfg_path.write_text(f'host = "{host}"\nallow_public_host = true\n' + cfg_path.read_text())
        cfg = load_config(cfg_path)
        layout = Layout(cfg.state)
        (layout.s3_dir / "data").mkdir(parents=True)
        local_specs.write_s3_identities(cfg, layout)
        weed = subprocess.Popen(local_specs.s3(cfg, layout).program.argv, stdout=log("weed.log"),
                                stderr=subprocess.STDOUT)
        procs.append(weed)
        s3 = S3Target(f"http://{host}:{cfg.ports.s3}", s3_keys["access_key"], s3_keys["secret_key"])
        deadline = time.monotonic() + 60
        while not probes.http(s3.endpoint + "/", expect_any_status=True)[0]:
            if weed.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not start: {(root / 'weed.log').read_text()[-2000:]}")
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while True:  # the filer can lag the S3 port by a moment
            try:
                s3.client().list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield Managed(host, pg, redis_password, redis_port, s3)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for f in logs:
            f.close()


def external_stack(managed: Managed, make_config, prefix: str, **extra) -> dict:
    """An ops.toml with all three services external, each stack its own database, bucket and queue; and the
    environment ``stack up`` is given to name them."""
    db, role, password = managed.app_database()
    bucket = f"ext-{uuid.uuid4().hex[:10]}"
    queue = f"q-{uuid.uuid4().hex[:10]}"
    cfg, project = make_config(prefix, postgres={"external": True, "database": db, "user": role},
                               redis={"external": True}, s3={"external": True, "bucket": bucket}, deploy=DEPLOY,
                               **extra)
    cfg.write_text(cfg.read_text().replace("[app]\n", f'[app]\nqueue = "{queue}"\n'))
    url = f"postgresql://{role}:{password}@{managed.host}:{managed.pg.port}/{db}?schema=public"
    env = {"DATABASE_URL": url, "REDIS_URL": managed.redis_url, "S3_ENDPOINT": managed.s3.endpoint,
           "S3_ACCESS_KEY": managed.s3.access_key, "S3_SECRET_KEY": managed.s3.secret_key}
    return {"cfg": cfg, "project": project, "root": cfg.parent, "db": db, "role": role, "password": password,
            "bucket": bucket, "queue": queue, "url": url, "env": env,
            "secrets": [password, managed.redis_password, managed.s3.secret_key, managed.pg.password]}


def assert_no_secret(st: dict, *results: Result) -> None:
    for r in results:
        for value in st["secrets"]:
            assert value not in r.stdout and value not in r.stderr, "a managed service's secret was printed"


def assert_external_rows(report: dict, managed: Managed) -> None:
    by_unit = {s["unit"]: s for s in report["services"]}
    for service in EMBEDDED:
        row = by_unit[service]
        assert row["role"] == "external" and row["state"] == "EXTERNAL" and row["healthy"] is True, row
    assert by_unit["postgres"]["detail"].startswith(f"external {managed.host}:{managed.pg.port}"), by_unit["postgres"]
    assert by_unit["redis"]["detail"].startswith(f"external {managed.host}:{managed.redis_port}"), by_unit["redis"]
    assert by_unit["s3"]["detail"].startswith(f"external {managed.s3.endpoint.split('://')[1]}"), by_unit["s3"]


def assert_smoke_went_through_the_managed_services(st: dict, managed: Managed, smoke: Result) -> None:
    """The job the smoke test queued was run by the app's containers: its row is in the managed database, its
    artifact in the managed bucket."""
    assert smoke.code == 0, smoke.output
    job_id = smoke.json["job_id"]
    with psycopg.connect(st["url"].split("?")[0]) as c:
        status, result = c.execute('SELECT status::text, result FROM "AIJob" WHERE id = %s', (job_id,)).fetchone()
    assert status == "succeeded" and result
    artifact = managed.s3.client().get_object(st["bucket"], f"artifacts/{job_id}.json").read()
    assert job_id.encode() in artifact


def redis_client_ips(managed: Managed) -> set[str]:
    r = redis.Redis(host=managed.host, port=managed.redis_port, password=managed.redis_password)
    return {c["addr"].rpartition(":")[0] for c in r.client_list()}


def project_containers(project: str) -> dict:
    found = client().containers.list(all=True, filters={"label": f"io.aixsss.project={project}"})
    return {c.name.removeprefix(f"{project}-"): c for c in found}


# --- the docker runtime ------------------------------------------------------------------------------------------

def brought_up(st: dict, remove, timeout: float):
    """``st`` with its ``stack up`` result under "up", for the module; then down and every trace removed."""
    r = run_cli("--json", "stack", "up", config=st["cfg"], env=st["env"], timeout=timeout)
    assert r.code == 0, r.output
    st["up"] = r
    yield st
    run_cli("stack", "down", config=st["cfg"], timeout=240)
    remove(st["project"])


@pytest.fixture(scope="module")
def dstack(docker_images, managed):
    yield from brought_up(external_stack(managed, docker_config, "aixsss-dext-"), purge, 400)


def test_docker_up_runs_none_of_the_external_services_and_the_containers_use_them(dstack, managed):
    up = dstack["up"]
    assert_external_rows(up.json, managed)
    assert up.json["healthy"], up.output
    assert_no_secret(dstack, up)
    found = project_containers(dstack["project"])
    assert set(found) == {"proxy", "api-blue", "worker-blue"}, set(found)
    volumes = {v.name.removeprefix(f"{dstack['project']}-")
               for v in client().volumes.list(filters={"label": f"io.aixsss.project={dstack['project']}"})}
    assert volumes == {"run"}, volumes  # no data volume for a service that runs elsewhere
    assert not [a for a in up.json["actions"] if a.split()[-1] in EMBEDDED], up.json["actions"]
    api = envfile.read(dstack["root"] / "state" / "env" / "api.env")
    assert api["DATABASE_URL"] == dstack["url"] and api["REDIS_URL"] == managed.redis_url
    assert api["S3_ENDPOINT"] == managed.s3.endpoint and api["S3_BUCKET"] == dstack["bucket"]
    # the migrations went into the managed database, the bucket was made in the managed store
    with psycopg.connect(dstack["url"].split("?")[0]) as c:
        applied = c.execute("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL").fetchone()[0]
    assert applied >= 1
    assert dstack["bucket"] in [b.name for b in managed.s3.client().list_buckets()]
    # the worker's container holds its connection to the managed Redis from its own address on the project network
    worker = found["worker-blue"]
    worker_ips = {n["IPAddress"] for n in worker.attrs["NetworkSettings"]["Networks"].values()}
    assert worker_ips & redis_client_ips(managed), (worker_ips, redis_client_ips(managed))
    assert httpx.get(up.json["url"] + "/api/health", timeout=5).json()["ok"] is True


def test_docker_smoke_backup_keys_and_doctor_against_the_managed_services(dstack, managed):
    cfg = dstack["cfg"]
    smoke = run_cli("--json", "stack", "smoke", config=cfg, timeout=180)
    assert_smoke_went_through_the_managed_services(dstack, managed, smoke)
    create = run_cli("backup", "create", config=cfg, timeout=300)
    assert create.code == 0, create.output
    verify = run_cli("backup", "verify", "latest", config=cfg, timeout=300)
    assert verify.code == 0, verify.output
    rotate = run_cli("--json", "--yes", "keys", "rotate", "--generate", config=cfg, timeout=600)
    assert rotate.code == 0, rotate.output
    new_key = envfile.read(dstack["root"] / "state" / "env" / "api.env")["API_KEY_ENCRYPTION_KEY"]
    assert new_key not in rotate.output
    doctor = run_cli("--json", "doctor", config=cfg, env={"COLUMNS": "250"}, timeout=180)
    assert findings_not_ok(doctor.json) == [], doctor.stdout
    assert doctor.code == 0, doctor.output
    status = run_cli("--json", "stack", "status", config=cfg)
    assert status.code == 0 and status.json["healthy"], status.output
    assert_external_rows(status.json, managed)
    assert_no_secret(dstack, smoke, create, verify, rotate, doctor, status)


def test_docker_down_leaves_the_managed_services_answering_and_up_needs_no_environment(dstack, managed):
    cfg = dstack["cfg"]
    down = run_cli("stack", "down", config=cfg, timeout=240)
    assert down.code == 0, down.output
    assert all(c.status == "exited" for c in project_containers(dstack["project"]).values())
    with psycopg.connect(dstack["url"].split("?")[0]) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert redis.Redis.from_url(managed.redis_url).ping()
    assert dstack["bucket"] in [b.name for b in managed.s3.client().list_buckets()]
    # up again with no DATABASE_URL, REDIS_URL or S3_* given: the env files keep them
    blank = {name: "" for name in dstack["env"]}
    again = run_cli("--json", "stack", "up", config=cfg, env=blank, timeout=400)
    assert again.code == 0, again.output
    assert_external_rows(again.json, managed)
    assert not set(project_containers(dstack["project"])) & set(EMBEDDED)
    assert_no_secret(dstack, down, again)


def test_docker_refuses_a_loopback_database_url_before_any_container(docker_engine):
    cfg, project = docker_config("aixsss-dext-loop-", postgres={"external": True})
    try:
        r = run_cli("stack", "up", config=cfg, env={"DATABASE_URL": "postgresql://u:pw@127.0.0.1:5432/app"},
                    timeout=120)
        assert r.code == 2, r.output
        assert "127.0.0.1" in r.output and "postgres.external" in r.output and "loopback" in r.output, r.output
        label = {"label": f"io.aixsss.project={project}"}
        assert not client().containers.list(all=True, filters=label)
        assert not client().networks.list(filters=label)
    finally:
        purge(project)


# --- a one-node swarm ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sstack(swarm_manager, docker_images, managed):
    # the embedded registry (the default) keeps its blobs in the managed store when s3 is external
    st = external_stack(managed, swarm_config, "aixsss-swext-",
                        swarm={"registry": "embedded", "registry_port": free_port()})
    yield from brought_up(st, purge_swarm, 600)


def swarm_services(project: str) -> dict:
    return {s.attrs["Spec"]["Name"].removeprefix(f"{project}-"): s
            for s in client().services.list(filters={"label": f"io.aixsss.project={project}"})}


def test_swarm_up_runs_none_of_the_external_services_and_the_app_answers_through_the_proxy(sstack, managed):
    from aixsss_ops.runtime import swarm_registry

    up = sstack["up"]
    assert_external_rows(up.json, managed)
    found = swarm_services(sstack["project"])
    assert {"proxy", "api-blue", "worker-blue"} <= set(found), set(found)
    assert not set(found) & set(EMBEDDED), set(found)
    assert not [c.name for c in client().containers.list(all=True, filters={
        "label": f"io.aixsss.project={sstack['project']}"}) if c.labels.get("io.aixsss.service") in EMBEDDED]
    # the embedded registry's replicas keep the app image they were pushed in the managed store
    bucket = swarm_registry.bucket_name(load_config(sstack["cfg"]))
    blobs = [o.object_name for o in managed.s3.client().list_objects(bucket, recursive=True)]
    assert any("/blobs/" in name for name in blobs), blobs[:20]
    assert httpx.get(up.json["url"] + "/api/health", timeout=5).json()["ok"] is True
    smoke = run_cli("--json", "stack", "smoke", config=sstack["cfg"], timeout=180)
    assert_smoke_went_through_the_managed_services(sstack, managed, smoke)
    status = run_cli("--json", "stack", "status", config=sstack["cfg"])
    assert status.code == 0 and status.json["healthy"], status.output
    assert_external_rows(status.json, managed)
    assert_no_secret(sstack, up, smoke, status)


def test_swarm_refuses_a_loopback_redis_url_before_any_service(swarm_manager):
    cfg, project = swarm_config("aixsss-swext-loop-", swarm={"registry": "none"}, redis={"external": True})
    try:
        r = run_cli("stack", "up", config=cfg, env={"REDIS_URL": "redis://:pw@127.0.0.1:6379"}, timeout=120)
        assert r.code == 2, r.output
        assert "127.0.0.1" in r.output and "redis.external" in r.output and "loopback" in r.output, r.output
        label = {"label": f"io.aixsss.project={project}"}
        assert not client().services.list(filters=label) and not client().networks.list(filters=label)
    finally:
        purge_swarm(project)
