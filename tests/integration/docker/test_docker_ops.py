"""The docker runtime's security and operations on a real dockerd: no secret in any container's definition, the app
containers unprivileged, config changes still detected, and `doctor`, `keys rotate` and the bundled playbooks
against containers."""

from __future__ import annotations

import json
import secrets
import time
from urllib.parse import urlsplit

import httpx
import pytest

from aixsss_ops import crypto, envfile
from aixsss_ops.config import load_config
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.runtime import docker_specs as specs
from aixsss_ops.stack.engines import open_stack
from aixsss_ops.stack.manager import Stack
from tests.cli import run_cli
from tests.conftest import findings_not_ok
from tests.integration.docker.conftest import docker_config, purge
from tests.integration.docker.test_docker_stack import containers

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 30.0, "lock_timeout": 60.0, "backup": False}
APP_UNITS = ("api", "worker")


@pytest.fixture(scope="module")
def env(docker_images):
    # strong, unique S3 credentials: a value found in a container's definition can only have come from here
    s3 = {"access_key": f"AK{secrets.token_hex(8)}", "secret_key": secrets.token_urlsafe(24)}
    cfg, project = docker_config("aixsss-dops-", deploy=DEPLOY, s3=s3)
    root = cfg.parent
    r = run_cli("stack", "up", config=cfg, timeout=300)
    assert r.code == 0, r.output
    stack = open_stack(load_config(cfg))
    yield {"cfg": cfg, "project": project, "root": root, "stack": stack, "url": stack.url}
    run_cli("stack", "down", config=cfg, timeout=240)
    purge(project)


def health(url: str) -> dict:
    return httpx.get(url + "/api/health", timeout=5).json()


def known_secrets(stack: Stack) -> dict[str, str]:
    """Every secret of the stack, by where it comes from: the env files, the stack's passwords, the S3 keys."""
    out: dict[str, str] = {}
    for svc in ("api", "worker"):
        e = envfile.read(stack.layout.env_file(svc))
        for name in ("API_KEY_ENCRYPTION_KEY", "API_KEY_ENCRYPTION_KEY_PREVIOUS", "JWT_SECRET", "S3_ACCESS_KEY",
                     "S3_SECRET_KEY"):
            if e.get(name):
                out[f"{name} ({svc}.env)"] = e[name]
        out[f"DATABASE_URL password ({svc}.env)"] = urlsplit(e["DATABASE_URL"]).password
    for name, value in json.loads(stack.layout.secrets_file.read_text()).items():
        out[name] = value
    out["s3.access_key"] = stack.cfg.s3.access_key
    out["s3.secret_key"] = stack.cfg.s3.secret_key.get_secret_value()
    assert all(len(v) >= 16 for v in out.values()), "every secret here is long enough to be searched for"
    return out


def assert_no_secret_in_definitions(project: str, stack: Stack) -> None:
    """docker inspect of every container of the project: no secret value in its environment, labels, command."""
    found = containers(project)
    assert {"postgres", "redis", "s3", "proxy"} <= set(found)
    for name, c in found.items():
        cfg = c.attrs["Config"]
        shown = {
            "Config.Env": "\n".join(cfg.get("Env") or []),
            "Config.Labels": json.dumps(cfg.get("Labels") or {}),
            "Config.Cmd": json.dumps(cfg.get("Cmd") or []),
            "Config.Entrypoint": json.dumps(cfg.get("Entrypoint") or []),
            "Args": json.dumps([c.attrs.get("Path"), *(c.attrs.get("Args") or [])]),
        }
        for where, text in shown.items():
            for secret_name, value in known_secrets(stack).items():
                assert value not in text, f"{secret_name} is in {where} of {name}"
        assert not [e for e in cfg.get("Env") or [] if e.split("=", 1)[0] in (
            "POSTGRES_PASSWORD", "S3_IDENTITIES", "DATABASE_URL", "API_KEY_ENCRYPTION_KEY", "JWT_SECRET")], name


def root_exec(c, argv: list[str], user: str = "0") -> str:
    code, out = c.exec_run(argv, user=user)
    assert code == 0, out
    return out.decode()


def process_environ(c) -> list[str]:
    """The environment of the container's main process, read as its own user (root lacks ptrace rights)."""
    return root_exec(c, ["cat", "/proc/1/environ"], user=c.attrs["Config"]["User"]).split("\0")


def test_no_secret_in_any_containers_definition_they_are_0400_files(env):
    project, stack = env["project"], env["stack"]
    assert_no_secret_in_definitions(project, stack)
    found = containers(project)
    wanted = {"postgres": {"postgres_password"}, "redis": {"redis_password"}, "s3": {"s3_access_key", "s3_secret_key"},
              "api-blue": {"api.env"}, "worker-blue": {"worker.env"}}
    for name, files in wanted.items():
        c = found[name]
        owner = root_exec(c, ["id", "-u", name]).strip() if name in ("postgres", "redis") else (
            "10001" if name.startswith(APP_UNITS) else "0")
        listing = root_exec(c, ["stat", "-c", "%n %a %u", *(f"{specs.SECRETS}/{f}" for f in sorted(files))])
        assert sorted(listing.split("\n")[:-1]) == [f"{specs.SECRETS}/{f} 400 {owner}" for f in sorted(files)], name
    # the files hold what the services need: the api serves through the proxy (env file read by envexec), the
    # s3 identities were made from the key files, Postgres took its password from its file at initdb
    assert health(env["url"])["ok"] is True
    s3 = stack.s3_target().client()
    assert s3.bucket_exists(stack.cfg.s3.bucket)
    with parse_database_url(stack.admin_url()).connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # the env file content reached the process, with the in-network hosts
    environ = process_environ(found["api-blue"])
    db = next(e for e in environ if e.startswith("DATABASE_URL=")).split("=", 1)[1]
    assert urlsplit(db).hostname == "postgres" and urlsplit(db).port == 5432
    redis_url = urlsplit(next(e for e in environ if e.startswith("REDIS_URL=")).split("=", 1)[1])
    assert (redis_url.hostname, redis_url.port) == ("redis", 6379) and len(redis_url.password or "") >= 24
    assert "APP_COLOR=blue" in environ


def test_app_containers_run_as_an_unprivileged_user(env):
    found = containers(env["project"])
    apps = [n for n in found if n.startswith(APP_UNITS)]
    assert {"api-blue", "worker-blue"} <= set(apps)
    for name in apps:
        c = found[name]
        if c.status != "running":
            continue
        assert c.attrs["Config"]["User"] == specs.APP_USER, name
        status = root_exec(c, ["cat", "/proc/1/status"])
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
        assert set(uids) == {str(specs.APP_UID)} and set(gids) == {str(specs.APP_UID)}, (name, uids, gids)
        top = c.top(ps_args="-o pid,uid,cmd")
        assert top["Titles"][1] == "UID" and all(row[1] != "0" for row in top["Processes"]), (name, top)
        # what a default `docker exec` runs as: the container's user, not root
        code, out = c.exec_run(["id", "-u"])
        assert code == 0 and out.decode().strip() == str(specs.APP_UID)
    # the api's socket in the shared run volume belongs to it, and nginx (www-data) reaches it through the switch
    sock = root_exec(found["proxy"], ["stat", "-c", "%u %a", str(specs.api_socket("blue"))]).split()
    assert sock[0] == str(specs.APP_UID)
    assert health(env["url"])["color"] == "blue"


def test_a_changed_env_file_recreates_its_container_without_showing_the_value(env):
    cfg, project, stack = env["cfg"], env["project"], env["stack"]
    marker = f"marker-{secrets.token_hex(12)}"
    path = stack.layout.env_file("worker")
    before = containers(project)["worker-blue"]
    envfile.write(path, {**envfile.read(path), "AIXSSS_TEST_MARKER": marker})
    r = run_cli("--json", "stack", "up", config=cfg, timeout=300)
    assert r.code == 0, r.output
    assert "recreated worker-blue" in r.json["actions"] and marker not in r.output
    after = containers(project)["worker-blue"]
    assert after.id != before.id and after.status == "running"
    assert after.labels["io.aixsss.spec"] != before.labels["io.aixsss.spec"]
    assert marker not in json.dumps(after.attrs["Config"])
    assert f"AIXSSS_TEST_MARKER={marker}" in process_environ(after)
    again = run_cli("--json", "stack", "up", config=cfg, timeout=300)
    assert again.code == 0 and again.json["actions"] == [], again.output


def doctor(env, *args: str, extra_env: dict | None = None):
    t = time.monotonic()
    r = run_cli("--json", "doctor", *args, config=env["cfg"], env={"COLUMNS": "250", **(extra_env or {})}, timeout=120)
    for name, value in known_secrets(env["stack"]).items():
        assert value not in r.output, f"{name} leaked into doctor's output"
    return r, time.monotonic() - t


def by_check(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in report["findings"]:
        out.setdefault(f["check"], []).append(f)
    return out


def test_doctor_on_a_healthy_docker_stack_every_check_ok(env):
    cfg = env["cfg"]
    for args in (("stack", "smoke"), ("backup", "create"), ("backup", "verify", "latest")):
        r = run_cli(*args, config=cfg, timeout=300)
        assert r.code == 0, r.output
    r, took = doctor(env)
    assert r.code == 0, r.stdout
    bad = findings_not_ok(r.json)
    assert not bad, bad
    checks = by_check(r.json)
    for name in ("postgres.reachable", "keys.decrypt", "redis.maxmemory-policy", "queue.workers", "s3.versioning",
                 "backup.newest", "backup.verified", "deploy.active", "deploy.idle-color", "deploy.lock",
                 "deploy.proxy-config"):
        assert name in checks, name
    assert f"nginx -t in {env['project']}-proxy accepts" in checks["deploy.proxy-config"][0]["message"]
    assert "blue answers through the proxy" in checks["deploy.active"][0]["message"]
    assert took < 15, took


def test_doctor_tells_the_truth_when_a_container_or_the_engine_is_down(env):
    cfg, project = env["cfg"], env["project"]
    containers(project)["redis"].stop(timeout=10)
    try:
        r, _ = doctor(env)
        assert r.code == 3, r.stdout
        checks = by_check(r.json)
        assert checks["redis.reachable"][0]["status"] == "fail" and "stack up" in checks["redis.reachable"][0]["fix"]
        assert all(checks[c][0]["status"] == "skipped" for c in ("redis.maxmemory-policy", "redis.memory"))
        assert checks["postgres.reachable"][0]["status"] == "ok"
    finally:
        fixed = run_cli("--json", "stack", "up", config=cfg, timeout=300)
        assert fixed.code == 0, fixed.output
    deadline = time.monotonic() + 60  # the worker reconnects to Redis
    while (r := doctor(env, "--only", "redis", "--only", "queue")[0]).code != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert r.code == 0, r.stdout

    down, took = doctor(env, extra_env={"DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert down.code == 3, down.stdout
    checks = by_check(down.json)
    for name in ("deploy.active", "deploy.idle-color", "deploy.proxy-config"):
        f = checks[name][0]
        assert f["status"] == "fail" and "Docker engine at tcp://127.0.0.1:1 is unreachable" in f["message"], f
    assert checks["postgres.reachable"][0]["status"] == "ok"  # the published ports still answer
    assert took < 20, took


def test_keys_rotate_full_mode_restarts_the_containers_and_stored_values_stay_readable(env):
    cfg, stack, url = env["cfg"], env["stack"], env["url"]
    old_raw = envfile.read(stack.layout.env_file("api"))["API_KEY_ENCRYPTION_KEY"]
    plain = f"sk-docker-{secrets.token_hex(12)}"
    with httpx.Client(base_url=url + "/api", timeout=10) as c:
        r = c.post("/ai-profiles", json={"name": "before", "provider": "deepseek", "apiKey": plain,
                                         "imageApiKey": plain + "-img"})
        assert r.status_code == 201, r.text
        profile = r.json()["id"]
    live_before = stack.live_color()

    rot = run_cli("--json", "--yes", "keys", "rotate", "--generate", config=cfg, timeout=300)
    assert rot.code == 0, rot.output
    res = rot.json
    assert res["phase"] == "done" and res["mode"] == "full" and res["reencrypted"] >= 2 and res["queue_resumed"]
    assert res["restart"]["restarted"] and res["restart"]["previous_color"] == live_before
    live = stack.live_color()
    assert live != live_before and health(url)["color"] == live
    new_raw = envfile.read(stack.layout.env_file("api"))["API_KEY_ENCRYPTION_KEY"]
    assert new_raw != old_raw and envfile.read(stack.layout.env_file("worker"))["API_KEY_ENCRYPTION_KEY"] == new_raw
    assert res["new_fingerprint"] == crypto.fingerprint(crypto.derive_key(new_raw))
    assert old_raw not in rot.output and new_raw not in rot.output and plain not in rot.output

    # stored before, readable after: the value decrypts with the new key, and the new worker (its new env file)
    # decrypts it for a job
    with parse_database_url(stack.app_database_url()).connect() as conn:
        stored = conn.execute('SELECT "apiKeyEncrypted" FROM "AIProfile" WHERE "id" = %s', (profile,)).fetchone()[0]
    assert crypto.decrypt(stored, crypto.derive_key(new_raw)) == plain
    with httpx.Client(base_url=url + "/api", timeout=10) as c:
        job = c.post("/ai-jobs", json={"type": "llm_chat", "profileId": profile, "input": {"q": "after"}})
        assert job.status_code < 300, job.text
        deadline = time.monotonic() + 60
        while (st := c.get(f"/ai-jobs/{job.json()['id']}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
    assert st["status"] == "succeeded", st

    # the old color's containers held the old key: stopped, not warm
    dst = run_cli("--json", "deploy", "status", config=cfg).json
    assert dst["colors"][live_before]["status"] == "cold"
    assert dst["colors"][live_before]["services"]["api"]["state"] in ("STOPPED", "EXITED")
    chk = run_cli("--json", "keys", "check", config=cfg)
    assert chk.code == 0 and chk.json["decrypt_ok"] == chk.json["values"], chk.output
    # the new key went into the new containers' secret files, not into their definitions
    assert_no_secret_in_definitions(env["project"], stack)
    assert containers(env["project"])[f"api-{live}"].attrs["Config"]["User"] == specs.APP_USER


def test_bundled_playbooks_release_and_rotate_key_run_on_docker(env):
    cfg, url = env["cfg"], env["url"]
    live = health(url)
    rel = run_cli("--yes", "--json", "play", "release", "--var", "version=5.0.0", config=cfg, timeout=600)
    assert rel.code == 0, rel.output
    steps = {s["id"]: s for s in rel.json["steps"]}
    assert [s["status"] for s in steps.values()] == ["succeeded"] * len(steps), steps
    assert set(steps) >= {"env", "doctor", "backup", "migrate", "deploy", "smoke"}
    now = health(url)
    assert now["version"] == "5.0.0" and now["color"] != live["color"]
    release = steps["deploy"]["output"]["release"]
    assert f"aixsss/app:{release}" in containers(env["project"])[f"api-{now['color']}"].image.tags

    old = envfile.read(env["stack"].layout.env_file("api"))["API_KEY_ENCRYPTION_KEY"]
    rk = run_cli("--yes", "--json", "play", "rotate-key", config=cfg, timeout=600)
    assert rk.code == 0, rk.output
    steps = {s["id"]: s for s in rk.json["steps"]}
    assert all(s["status"] == "succeeded" for s in steps.values()), steps
    assert steps["rotate"]["output"]["phase"] == "done" and steps["rotate"]["output"]["restart"]["restarted"]
    assert steps["smoke"]["output"]["job_status"] == "succeeded"
    assert envfile.read(env["stack"].layout.env_file("api"))["API_KEY_ENCRYPTION_KEY"] != old
    assert old not in rk.output
    assert_no_secret_in_definitions(env["project"], env["stack"])

