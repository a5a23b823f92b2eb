"""The swarm runtime on a one-node swarm (the test engine), what the docker runtime's tests check there: the stack
as services, secrets as Swarm secrets, blue/green deploy and rollback with replicas under load, a release that
cannot start, backup and restore, key rotation, an idempotent up, unprivileged app tasks, a killed replica, data
kept across down and up. Several nodes: tests/integration/docker/swarm/."""

from __future__ import annotations

import json
import secrets
import threading
import time

import docker
import httpx
import pytest

from aixsss_ops import envfile
from aixsss_ops.config import load_config
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.runtime.swarm import TERMINAL
from aixsss_ops.stack.engines import open_stack
from tests.cli import run_cli
from tests.conftest import poll
from tests.integration.docker.conftest import SOCK, purge_swarm, swarm_config
from tests.integration.test_deploy import Watcher, broken_copy, health

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 60.0, "lock_timeout": 60.0, "backup": False}


@pytest.fixture(scope="module")
def env(swarm_manager, docker_images):
    cfg, project = swarm_config("aixsss-swarm-", swarm={"registry": "none", "replicas": {"api": 2}}, deploy=DEPLOY)
    r = run_cli("stack", "up", config=cfg, timeout=600)
    assert r.code == 0, r.output
    yield {"cfg": cfg, "project": project, "root": cfg.parent, "url": open_stack(load_config(cfg)).url}
    run_cli("stack", "down", config=cfg, timeout=240)
    purge_swarm(project)


def services(project: str) -> dict:
    client = docker.DockerClient(base_url=f"unix://{SOCK}", timeout=60)
    return {s.attrs["Spec"]["Name"].removeprefix(f"{project}-"): s
            for s in client.services.list(filters={"label": f"io.aixsss.project={project}"})}


def running_tasks(service) -> list[dict]:
    return [t for t in service.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]


def test_the_stack_is_services_with_replicas_and_no_secret_in_any_spec(env):
    found = services(env["project"])
    assert {"postgres", "redis", "s3", "proxy", "api-blue", "worker-blue"} <= set(found)
    api = found["api-blue"].attrs["Spec"]
    assert api["Mode"] == {"Replicated": {"Replicas": 2}} and len(running_tasks(found["api-blue"])) == 2
    assert api["EndpointSpec"]["Mode"] == "dnsrr"
    assert found["proxy"].attrs["Spec"]["Mode"] == {"Global": {}}
    assert found["proxy"].attrs["Spec"]["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"
    assert found["postgres"].attrs["Spec"]["TaskTemplate"]["Placement"]["Constraints"][0].startswith("node.hostname==")
    refs = api["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert [(r["File"]["Name"], r["File"]["UID"], r["File"]["Mode"]) for r in refs] == [("api.env", "10001", 0o400)]

    # nothing secret anywhere in what the swarm shows of the project
    state = env["root"] / "state"
    values = set(json.loads((state / "secrets" / "stack.json").read_text()).values())
    api_env = envfile.read(state / "env" / "api.env")
    values |= {api_env["API_KEY_ENCRYPTION_KEY"], api_env["JWT_SECRET"], load_config(env["cfg"]).s3.secret_key
               .get_secret_value()}
    dump = json.dumps([s.attrs for s in found.values()])
    leaked = [v for v in values if len(v) >= 8 and v in dump]
    assert not leaked, "a secret is part of a service's spec"

    st = run_cli("--json", "stack", "status", config=env["cfg"])
    assert st.code == 0, st.output
    by_unit = {s["unit"]: s for s in st.json["services"]}
    assert by_unit["api-blue"]["healthy"] and "2/2 running" in by_unit["api-blue"]["detail"]
    [node] = st.json["nodes"]  # one node: it runs every task of the project
    assert node["role"] == "manager" and node["leader"] and node["state"] == "ready"
    assert node["tasks"] >= 7 and {f"{env['project']}-api-blue", f"{env['project']}-proxy"} <= set(node["services"])


def test_deploy_then_rollback_under_load_with_every_replica_gated(env):
    cfg, url = env["cfg"], env["url"]
    before = health(url)
    assert before["color"] == "blue"
    with Watcher(url) as w:
        r = run_cli("--json", "deploy", "--version", "2.0.0", config=cfg, timeout=600)
    assert r.code == 0, r.output
    assert r.json["color"] == "green" and (health(url)["color"], health(url)["version"]) == ("green", "2.0.0")
    assert w.seen and not w.errors and all(s == 200 for s, _v, _c in w.seen), w.errors[:3]
    found = services(env["project"])
    assert len(running_tasks(found["api-green"])) == 2
    assert found["api-green"].attrs["Spec"]["Labels"]["io.aixsss.release"] == r.json["release"]
    assert found["proxy"].attrs["Spec"]["Labels"]["io.aixsss.live"] == "green"
    st = run_cli("--json", "deploy", "status", config=cfg).json
    assert st["active"] == st["proxy_target"] == "green" and st["consistent"]
    assert st["colors"]["blue"]["services"]["api"]["state"] == "RUNNING"  # warm for rollback
    assert st["colors"]["green"]["services"]["api"]["replicas"].startswith("2/2 running on ")
    assert st["colors"]["blue"]["services"]["worker"]["state"] in ("STOPPED", "STOPPING")  # draining or drained

    with Watcher(url) as w:
        rb = run_cli("--json", "rollback", config=cfg, timeout=300)
    assert rb.code == 0, rb.output
    assert rb.json["color"] == "blue" and rb.json["health_checks"] == 1  # the warm replicas, no new boot
    assert (health(url)["color"], health(url)["version"]) == ("blue", before["version"])
    assert w.seen and not w.errors, w.errors[:3]
    assert services(env["project"])["proxy"].attrs["Spec"]["Labels"]["io.aixsss.live"] == "blue"


def test_a_release_that_cannot_start_leaves_the_live_color_serving(env):
    cfg, url = env["cfg"], env["url"]
    live = health(url)
    src = broken_copy(env["root"], "crashing", "raise SystemExit('api crashed on purpose')")
    with Watcher(url) as w:
        r = run_cli("--json", "deploy", "--version", "9.9.9-crashing", "--source", str(src), config=cfg, timeout=600)
    assert r.code != 0
    assert "api crashed on purpose" in r.output  # its replicas' logs come with the failure
    assert (health(url)["color"], health(url)["version"]) == (live["color"], live["version"])
    assert not w.errors, w.errors[:3]
    idle = "green" if live["color"] == "blue" else "blue"
    assert services(env["project"])[f"api-{idle}"].attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 0


def test_smoke_backup_and_restore_round_trip(env):
    cfg = env["cfg"]
    smoke = run_cli("--json", "stack", "smoke", config=cfg, timeout=180)
    assert smoke.code == 0, smoke.output
    job_id = smoke.json["job_id"]
    b = run_cli("--json", "backup", "create", config=cfg, timeout=300)
    assert b.code == 0, b.output
    stack = open_stack(load_config(cfg))
    url = envfile.read(stack.layout.env_file("api"))["DATABASE_URL"]
    with parse_database_url(url).connect() as conn:
        conn.execute('DELETE FROM "AIJob" WHERE id = %s', (job_id,))
        conn.commit()
    r = run_cli("--json", "--yes", "restore", b.json["id"], config=cfg, timeout=300)
    assert r.code == 0, r.output
    with parse_database_url(url).connect() as conn:
        assert conn.execute('SELECT status::text FROM "AIJob" WHERE id = %s', (job_id,)).fetchone()[0] == "succeeded"
    deadline = time.monotonic() + 120  # the restore stopped the app's services and started them again
    while (st := run_cli("--json", "stack", "status", config=cfg)).code != 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert st.code == 0, [s for s in st.json["services"] if not s["healthy"]]


def test_keys_rotate_restarts_the_replicas_with_the_new_key_as_a_new_secret(env):
    cfg, url = env["cfg"], env["url"]
    stack = open_stack(load_config(cfg))
    old_raw = envfile.read(stack.layout.env_file("api"))["API_KEY_ENCRYPTION_KEY"]
    plain = f"sk-swarm-{secrets.token_hex(12)}"
    with httpx.Client(base_url=url + "/api", timeout=10) as c:
        r = c.post("/ai-profiles", json={"name": "before", "provider": "deepseek", "apiKey": plain})
        assert r.status_code == 201, r.text
    live_before = stack.live_color()
    rot = run_cli("--json", "--yes", "keys", "rotate", "--generate", config=cfg, timeout=600)
    assert rot.code == 0, rot.output
    assert rot.json["phase"] == "done" and rot.json["restart"]["restarted"]
    live = stack.live_color()
    assert live != live_before and health(url)["color"] == live
    new_raw = envfile.read(stack.layout.env_file("api"))["API_KEY_ENCRYPTION_KEY"]
    assert new_raw != old_raw and old_raw not in rot.output and new_raw not in rot.output
    found = services(env["project"])
    names = [r["SecretName"] for r in found[f"api-{live}"].attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]]
    old_names = [r["SecretName"] for r in
                 found[f"api-{live_before}"].attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]]
    assert names != old_names  # a new env file is a new (immutable) secret
    assert new_raw not in json.dumps([s.attrs for s in found.values()])
    chk = run_cli("--json", "keys", "check", config=cfg)
    assert chk.code == 0 and chk.json["decrypt_ok"] == chk.json["values"], chk.output


def app_containers(project: str) -> dict[str, list]:
    """The running containers of the app's services (``api-blue`` -> its replicas' containers) on this node."""
    client = docker.DockerClient(base_url=f"unix://{SOCK}", timeout=60)
    out: dict[str, list] = {}
    for c in client.containers.list(filters={"label": "com.docker.swarm.service.name"}):
        name = c.labels["com.docker.swarm.service.name"]
        unit = name.removeprefix(f"{project}-")
        if name.startswith(f"{project}-") and unit.startswith(("api-", "worker-")):
            out.setdefault(unit, []).append(c)
    return out


def test_up_is_idempotent_on_the_swarm(env):
    before = {n: s.attrs["Version"]["Index"] for n, s in services(env["project"]).items()}
    again = run_cli("--json", "stack", "up", config=env["cfg"], timeout=300)
    assert again.code == 0, again.output
    changed = [a for a in again.json["actions"] if a.startswith(("created", "updated", "recreated", "applied"))]
    assert not changed, again.json["actions"]
    after = {n: s.attrs["Version"]["Index"] for n, s in services(env["project"]).items()}
    assert after == before  # no service spec was sent again


def test_app_tasks_run_as_an_unprivileged_user(env):
    from aixsss_ops.runtime import docker_specs as specs

    found = app_containers(env["project"])
    live = open_stack(load_config(env["cfg"])).live_color()
    assert len(found.get(f"api-{live}", [])) == 2 and found.get(f"worker-{live}"), found  # 2 api replicas
    for unit, replicas in found.items():
        for c in replicas:
            assert c.attrs["Config"]["User"] == specs.APP_USER, unit
            code, out = c.exec_run(["id", "-u"])
            assert code == 0 and out.decode().strip() == str(specs.APP_UID), unit
            top = c.top(ps_args="-o pid,uid,cmd")
            assert all(row[1] != "0" for row in top["Processes"]), (unit, top)


def test_a_killed_replica_is_replaced_and_the_stack_is_healthy_again(env):
    cfg, url = env["cfg"], env["url"]
    live = open_stack(load_config(cfg)).live_color()
    victim = app_containers(env["project"])[f"worker-{live}"][0]
    victim.kill()  # SIGKILL: Swarm's restart policy starts a new task
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = app_containers(env["project"]).get(f"worker-{live}", [])
        if now and victim.id not in {c.id for c in now}:
            break
        time.sleep(1)
    else:
        raise AssertionError("Swarm did not replace the killed worker task")
    deadline = time.monotonic() + 120
    while (st := run_cli("--json", "stack", "status", config=cfg)).code != 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert st.code == 0, [s for s in st.json["services"] if not s["healthy"]]
    smoke = run_cli("stack", "smoke", config=cfg, timeout=180)
    assert smoke.code == 0, smoke.output
    assert health(url)["color"] == live


def test_a_start_waits_until_the_tasks_of_a_stop_have_ended(env):
    """The store started again while its old task still stops (SeaweedFS takes seconds to): the new task comes
    only once the old one ended, never two on one volume at once, and the stack is ready again."""
    rt = open_stack(load_config(env["cfg"])).runtime
    svc = services(env["project"])["s3"]
    most = [0]
    done = threading.Event()

    def sample():  # the most tasks of the store not yet ended at any one time
        while not done.is_set():
            most[0] = max(most[0], sum(1 for t in svc.tasks() if t["Status"]["State"] not in TERMINAL))
            time.sleep(0.05)

    rt.stop("s3", wait=False)
    assert rt.state("s3") == "STOPPING"
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        rt.start("s3")
        poll(lambda: rt.state("s3") == "RUNNING", 120, 0.2, "the store running again")
    finally:
        done.set()
        watcher.join(10)
    assert most[0] == 1
    up = run_cli("--json", "stack", "up", config=env["cfg"], timeout=300)
    assert up.code == 0, up.output


def test_data_survives_down_and_up(env):
    cfg = env["cfg"]
    smoke = run_cli("--json", "stack", "smoke", config=cfg, timeout=180)
    assert smoke.code == 0, smoke.output
    job_id = smoke.json["job_id"]
    stack = open_stack(load_config(cfg))
    artifact = stack.s3_target().client().get_object(stack.cfg.s3.bucket, f"artifacts/{job_id}.json").read()
    down = run_cli("--json", "stack", "down", config=cfg, timeout=300)
    assert down.code == 0, down.output
    assert not app_containers(env["project"])
    assert run_cli("--json", "stack", "status", config=cfg).code == 3
    again = run_cli("--json", "stack", "up", config=cfg, timeout=600)
    assert again.code == 0, again.output
    # the services were scaled to 0 and the proxy (a global service) removed: only the proxy is created again
    made = [a for a in again.json["actions"] if a.startswith(("applied migration", "created"))]
    assert made == ["created proxy"], again.json["actions"]
    url = envfile.read(stack.layout.env_file("api"))["DATABASE_URL"]
    with parse_database_url(url).connect() as conn:
        assert conn.execute('SELECT status::text FROM "AIJob" WHERE id = %s', (job_id,)).fetchone()[0] == "succeeded"
    assert stack.s3_target().client().get_object(stack.cfg.s3.bucket, f"artifacts/{job_id}.json").read() == artifact
