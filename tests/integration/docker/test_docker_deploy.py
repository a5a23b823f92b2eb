"""Blue/green deploy, rollback, a container killed during a deploy, and backup/restore on the docker runtime."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from aixsss_ops import envfile
from aixsss_ops.config import load_config
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.stack.engines import open_stack
from tests.cli import EXE, REPO, run_cli
from tests.conftest import poll
from tests.integration.docker.conftest import docker_config, purge
from tests.integration.docker.test_docker_stack import containers
from tests.integration.test_deploy import Watcher, broken_copy, health

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 30.0, "lock_timeout": 60.0, "backup": False}


@pytest.fixture(scope="module")
def env(docker_images):
    cfg, project = docker_config("aixsss-ddeploy-", deploy=DEPLOY)
    r = run_cli("stack", "up", config=cfg, timeout=300)
    assert r.code == 0, r.output
    yield {"cfg": cfg, "project": project, "root": cfg.parent, "url": open_stack(load_config(cfg)).url}
    run_cli("stack", "down", config=cfg, timeout=240)
    purge(project)


def test_deploy_v2_to_green_then_warm_rollback(env):
    cfg, url = env["cfg"], env["url"]
    before = health(url)
    assert before["color"] == "blue"
    with Watcher(url) as w:
        r = run_cli("--json", "deploy", "--version", "2.0.0", config=cfg, timeout=300)
    assert r.code == 0, r.output
    assert r.json["color"] == "green" and r.json["release"].startswith("2.0.0-")
    assert (health(url)["version"], health(url)["color"]) == ("2.0.0", "green")
    assert w.seen and not w.errors and all(s == 200 for s, _v, _c in w.seen), w.errors[:3]
    found = containers(env["project"])
    assert found["api-green"].labels["io.aixsss.release"] == r.json["release"]
    assert f"aixsss/app:{r.json['release']}" in found["api-green"].image.tags

    st = run_cli("--json", "deploy", "status", config=cfg).json
    assert st["active"] == st["proxy_target"] == "green" and st["consistent"]
    assert st["colors"]["blue"]["services"]["api"]["state"] == "RUNNING"  # warm for rollback
    assert st["colors"]["blue"]["services"]["worker"]["state"] == "STOPPED"  # drained

    with Watcher(url) as w:
        rb = run_cli("--json", "rollback", config=cfg, timeout=120)
    assert rb.code == 0, rb.output
    assert rb.json["color"] == "blue" and rb.json["health_checks"] == 1  # the retained container, not a new boot
    assert (health(url)["color"], health(url)["version"]) == ("blue", before["version"])
    assert not w.errors, w.errors[:3]
    hist = run_cli("--json", "deploy", "releases", config=cfg).json
    assert hist[-1]["action"] == "rollback" and hist[-1]["warm"] is True
    # the warm color's worker: its start was sent and not waited for (the engine carries it through), the old
    # color's worker drains the same way
    poll(lambda: containers(env["project"])["worker-blue"].status == "running", 60, 0.2, "worker-blue running")
    poll(lambda: containers(env["project"])["worker-green"].status == "exited", 90, 0.2, "worker-green stopped")


def test_a_crashing_release_never_receives_traffic_and_its_logs_are_shown(env):
    cfg, url = env["cfg"], env["url"]
    live = health(url)
    src = broken_copy(env["root"], "crashing", "raise SystemExit('boom: this release cannot start')")
    with Watcher(url) as w:
        r = run_cli("deploy", "--source", str(src), "--version", "9.9.9-crashing", config=cfg, timeout=300)
    assert r.code == 1, r.output
    assert "boom: this release cannot start" in r.stderr and "last lines of api-" in r.stderr
    assert not w.errors and all(v == live["version"] and c == live["color"] for _s, v, c in w.seen)
    idle = "green" if live["color"] == "blue" else "blue"
    st = run_cli("--json", "deploy", "status", config=cfg).json
    assert st["active"] == live["color"] and st["colors"][idle]["status"] == "failed"


def test_containers_killed_during_a_deploy(env):
    """The new color's api and the live worker die by SIGKILL mid-deploy: the live color keeps serving, the deploy
    fails, status tells the truth, and stack up repairs."""
    cfg, url, project = env["cfg"], env["url"], env["project"]
    live = health(url)
    idle = "green" if live["color"] == "blue" else "blue"
    src = broken_copy(env["root"], "slow", "import time\ntime.sleep(120)")
    with Watcher(url) as w:
        p = subprocess.Popen([EXE, "--config", str(cfg), "deploy", "--source", str(src), "--version", "7.0.0-slow"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            api = containers(project).get(f"api-{idle}")
            if api and api.labels["io.aixsss.release"].startswith("7.0.0-slow") and api.status == "running":
                break
            time.sleep(0.2)
        else:
            p.kill()
            pytest.fail("the slow release's api never started")
        api.kill()
        containers(project)[f"worker-{live['color']}"].kill()
        out, err = p.communicate(timeout=120)
    assert p.returncode == 1, out + err
    assert f"api-{idle} is EXITED" in err
    assert not w.errors and all(v == live["version"] and c == live["color"] for _s, v, c in w.seen), w.errors[:3]

    st = run_cli("--json", "stack", "status", config=cfg)
    assert st.code == 3
    units = {s["unit"]: s for s in st.json["services"]}
    assert units[f"worker-{live['color']}"]["state"] == "EXITED" and "137" in units[f"worker-{live['color']}"]["detail"]
    assert units[f"api-{live['color']}"]["healthy"] is True
    dst = run_cli("--json", "deploy", "status", config=cfg).json
    assert dst["active"] == live["color"] and dst["colors"][idle]["status"] == "failed"
    assert dst["lock"]["held"] is False

    fixed = run_cli("--json", "stack", "up", config=cfg, timeout=300)
    assert fixed.code == 0, fixed.output
    assert f"started worker-{live['color']}" in fixed.json["actions"]
    smoke = run_cli("stack", "smoke", config=cfg, timeout=120)
    assert smoke.code == 0, smoke.output
    again = run_cli("--json", "deploy", "--version", "8.0.0", config=cfg, timeout=300)
    assert again.code == 0, again.output
    assert health(url)["version"] == "8.0.0" and json.loads(again.stdout)["color"] == idle


def test_backup_and_restore_round_trip(env):
    cfg = env["cfg"]
    smoke = run_cli("--json", "stack", "smoke", config=cfg, timeout=120)
    assert smoke.code == 0, smoke.output
    job_id = smoke.json["job_id"]
    b = run_cli("--json", "backup", "create", config=cfg, timeout=300)
    assert b.code == 0, b.output
    backup_id = b.json["id"]
    stack = open_stack(load_config(cfg))
    url = envfile.read(stack.layout.env_file("api"))["DATABASE_URL"]
    with parse_database_url(url).connect() as conn:
        conn.execute('DELETE FROM "AIJob" WHERE id = %s', (job_id,))
        conn.commit()
    r = run_cli("--json", "--yes", "restore", backup_id, config=cfg, timeout=300)
    assert r.code == 0, r.output
    with parse_database_url(url).connect() as conn:
        assert conn.execute('SELECT status::text FROM "AIJob" WHERE id = %s', (job_id,)).fetchone()[0] == "succeeded"
    deadline = time.monotonic() + 60  # the restore stopped api and worker and started them again
    while (st := run_cli("--json", "stack", "status", config=cfg)).code != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert st.code == 0, [s for s in st.json["services"] if not s["healthy"]]
    assert httpx.get(env["url"] + f"/api/ai-jobs/{job_id}", timeout=10).json()["status"] == "succeeded"
