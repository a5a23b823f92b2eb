"""The foundation scenario on the docker runtime: real dockerd, images built from debootstrap, real containers."""

from __future__ import annotations

import docker
import httpx
import pytest

from aixsss_ops import envfile
from aixsss_ops.config import load_config
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.stack.engines import open_stack
from tests.cli import run_cli
from tests.integration.docker.conftest import SOCK, docker_config, purge

UNITS = {"postgres", "redis", "s3", "proxy", "api-blue", "worker-blue"}


@pytest.fixture(scope="module")
def env(docker_images):
    cfg, project = docker_config("aixsss-dstack-")
    yield {"cfg": cfg, "project": project}
    run_cli("stack", "down", config=cfg, timeout=240)
    purge(project)


@pytest.fixture(scope="module")
def up(env):
    r = run_cli("--json", "stack", "up", config=env["cfg"], timeout=300)
    assert r.code == 0, r.output
    return r.json


def client() -> docker.DockerClient:
    return docker.DockerClient(base_url=f"unix://{SOCK}", timeout=60)


def containers(project: str) -> dict:
    for attempt in range(5):
        try:
            found = client().containers.list(all=True, filters={"label": f"io.aixsss.project={project}"})
            return {c.name.removeprefix(f"{project}-"): c for c in found}
        except docker.errors.NotFound:  # removed between the listing and its inspection (a deploy replacing it)
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def test_up_from_empty_creates_network_volumes_and_healthy_containers(up, env):
    units = {s["unit"]: s for s in up["services"]}
    assert set(units) == UNITS
    assert all(s["state"] == "RUNNING" and s["healthy"] for s in units.values()), units
    assert any(a.startswith("applied migration") for a in up["actions"])
    assert f"created network {env['project']}" in up["actions"]
    for key in ("pgdata", "redis", "s3", "run"):
        assert f"created volume {env['project']}-{key}" in up["actions"]
    found = containers(env["project"])
    assert set(found) == UNITS
    api = found["api-blue"]
    assert api.labels["io.aixsss.service"] == "api" and api.labels["io.aixsss.color"] == "blue"
    assert api.labels["io.aixsss.release"].startswith("1.0.0-")
    assert api.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert api.attrs["HostConfig"]["Memory"] == 512 * 1024 * 1024
    assert f"aixsss/app:{api.labels['io.aixsss.release']}" in api.image.tags  # a swarm test may add registry tags
    assert list(api.attrs["NetworkSettings"]["Networks"]) == [env["project"]]
    status = run_cli("--json", "stack", "status", config=env["cfg"])
    assert status.code == 0 and status.json["healthy"]


def test_health_through_nginx_and_the_web_build(up):
    body = httpx.get(up["url"] + "/api/health", timeout=5).json()
    assert body["ok"] is True and body["color"] == "blue"
    page = httpx.get(up["url"] + "/", timeout=5)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_secrets_are_not_printed(up, env):
    stack = open_stack(load_config(env["cfg"]))
    key = envfile.read(stack.layout.env_file("api"))["API_KEY_ENCRYPTION_KEY"]
    r = run_cli("--json", "--verbose", "stack", "up", config=env["cfg"], timeout=300)
    assert key not in r.output
    logs = run_cli("stack", "logs", "api-blue", config=env["cfg"])
    assert logs.code == 0 and key not in logs.output


def test_profile_and_job_then_data_survives_down_up(up, env):
    cfg = env["cfg"]
    smoke = run_cli("--json", "stack", "smoke", config=cfg, timeout=120)
    assert smoke.code == 0, smoke.output
    job_id = smoke.json["job_id"]
    stack = open_stack(load_config(cfg))
    url = envfile.read(stack.layout.env_file("api"))["DATABASE_URL"]
    with parse_database_url(url).connect() as conn:
        status, result = conn.execute('SELECT status::text, result FROM "AIJob" WHERE id = %s', (job_id,)).fetchone()
    assert status == "succeeded" and result
    bucket = stack.cfg.s3.bucket
    artifact = stack.s3_target().client().get_object(bucket, f"artifacts/{job_id}.json").read()
    assert job_id.encode() in artifact

    down = run_cli("--json", "stack", "down", config=cfg, timeout=240)
    assert down.code == 0, down.output
    assert all(c.status == "exited" for c in containers(env["project"]).values())
    st = run_cli("--json", "stack", "status", config=cfg)
    assert st.code == 3 and not st.json["healthy"]
    again = run_cli("--json", "stack", "up", config=cfg, timeout=300)
    assert again.code == 0, again.output
    assert not any(a.startswith(("applied migration", "created")) for a in again.json["actions"]), again.json["actions"]
    with parse_database_url(url).connect() as conn:
        assert conn.execute('SELECT status::text FROM "AIJob" WHERE id = %s', (job_id,)).fetchone()[0] == "succeeded"
    assert stack.s3_target().client().get_object(bucket, f"artifacts/{job_id}.json").read() == artifact


def test_up_is_idempotent(up, env):
    again = run_cli("--json", "stack", "up", config=env["cfg"], timeout=300)
    assert again.code == 0, again.output
    assert again.json["actions"] == []


def test_a_container_removed_behind_the_tools_back(up, env):
    cfg = env["cfg"]
    containers(env["project"])["worker-blue"].remove(force=True)
    st = run_cli("--json", "stack", "status", config=cfg)
    assert st.code == 3
    worker = next(s for s in st.json["services"] if s["unit"] == "worker-blue")
    assert worker["state"] == "ABSENT" and worker["healthy"] is False and "removed" in worker["detail"]
    fixed = run_cli("--json", "stack", "up", config=cfg, timeout=300)
    assert fixed.code == 0, fixed.output
    assert "created worker-blue" in fixed.json["actions"] and "started worker-blue" in fixed.json["actions"]
    assert run_cli("stack", "status", config=cfg).code == 0


def test_a_killed_container_shows_in_status_and_up_repairs_it(up, env):
    cfg = env["cfg"]
    containers(env["project"])["redis"].kill()  # SIGKILL: the engine keeps it down (a manual kill)
    st = run_cli("--json", "stack", "status", config=cfg)
    assert st.code == 3
    redis = next(s for s in st.json["services"] if s["unit"] == "redis")
    assert redis["state"] == "EXITED" and "exited 137" in redis["detail"]
    fixed = run_cli("--json", "stack", "up", config=cfg, timeout=300)
    assert fixed.code == 0, fixed.output
    assert "started redis" in fixed.json["actions"]
    smoke = run_cli("stack", "smoke", config=cfg, timeout=120)
    assert smoke.code == 0, smoke.output


def test_postgres_exec_returns_output_like_the_local_runtime(up, env):
    stack = open_stack(load_config(env["cfg"]))
    r = stack.runtime.exec("postgres", ["pg_dump", "--schema-only", "-U", "postgres", "aixsss"], timeout=60)
    assert r.returncode == 0, r.stderr
    assert isinstance(r.stdout, bytes) and b'CREATE TABLE public."AIJob"' in r.stdout
    bad = stack.runtime.exec("postgres", ["psql", "-U", "postgres", "-c", "SELECT nope"], timeout=30)
    assert bad.returncode != 0 and b"nope" in bad.stderr


def test_engine_unreachable_is_one_clear_error(env):
    r = run_cli("stack", "status", config=env["cfg"], env={"DOCKER_HOST": "tcp://127.0.0.1:1"}, timeout=60)
    assert r.code == 1, r.output
    assert "Docker engine at tcp://127.0.0.1:1 is unreachable" in r.stderr and "DOCKER_HOST" in r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) <= 3
    j = run_cli("--json", "stack", "up", config=env["cfg"], env={"DOCKER_HOST": "tcp://127.0.0.1:1"}, timeout=60)
    assert j.code == 1 and j.json["ok"] is False and "DOCKER_HOST" in j.json["error"]


def test_a_taken_port_is_named(docker_images):
    import socket

    cfg, project = docker_config("aixsss-dtaken-")
    port = load_config(cfg).ports.redis
    try:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            r = run_cli("stack", "up", config=cfg, timeout=300)
        assert r.code == 2, r.output
        assert f"port {port} (redis) is already in use" in r.stderr
        assert not [c for c in containers(project).values() if c.status == "running"]
    finally:
        purge(project)


def test_running_containers_match_the_rendered_compose_files(up, env):
    """compose render and the runtime share one spec: what runs is what the compose files say."""
    import yaml

    from aixsss_ops.compose.render import render_files

    cfg = load_config(env["cfg"])
    infra = yaml.safe_load(render_files(cfg)["infra.yml"])["services"]
    infra |= yaml.safe_load(render_files(cfg)["proxy.yml"])["services"]
    found = containers(env["project"])
    for name, svc in infra.items():
        c = found[name].attrs
        assert c["Config"]["Cmd"] == [a.replace("$$", "$") for a in svc["command"]], name
        assert c["Config"]["User"] == svc.get("user", ""), name
        assert c["Config"]["Image"] == svc["image"]
        assert c["Config"]["Labels"].items() >= svc["labels"].items()
        assert c["Config"]["StopSignal"] == svc["stop_signal"]
        assert c["HostConfig"]["RestartPolicy"]["Name"] == svc["restart"]
        ports = {f"{b['HostIp']}:{b['HostPort']}:{p.split('/')[0]}" for p, bs in c["HostConfig"]["PortBindings"].items()
                 for b in bs}
        assert ports == set(svc["ports"]), name
        mounts = {f"{m['Name'].removeprefix(env['project'] + '-')}:{m['Destination']}" for m in c["Mounts"]}
        assert mounts == set(svc.get("volumes", [])), name
        if "healthcheck" in svc:
            assert c["Config"]["Healthcheck"]["Test"] == [a.replace("$$", "$") for a in svc["healthcheck"]["test"]]
        env_keys = {e.split("=", 1)[0] for e in c["Config"]["Env"]}
        assert set(svc.get("environment", {})) <= env_keys, name
        for ref in svc.get("secrets", []):  # compose's secret files are where the runtime wrote its own
            code, out = found[name].exec_run(["stat", "-c", "%a", f"/run/secrets/{ref['target']}"], user="0")
            assert code == 0 and out.decode().strip() == "400", (name, ref, out)
