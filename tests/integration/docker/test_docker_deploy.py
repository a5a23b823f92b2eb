"""Blue/green deploy, rollback, a container killed during a deploy, and backup/restore on the docker runtime."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import docker
import httpx
import pytest

from aixsss_ops import envfile
from aixsss_ops.config import load_config
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.runtime.docker import DockerRuntime, container_state
from aixsss_ops.stack.engines import open_stack
from tests.cli import EXE, REPO, run_cli
from tests.conftest import poll
from tests.integration.docker.conftest import SOCK, docker_config, purge
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


def _proxy_execs(project: str, since: float) -> list[str]:
    """The exec actions the engine reported for the proxy container since ``since`` (its event log)."""
    client = docker.DockerClient(base_url=f"unix://{SOCK}", timeout=60)
    events = client.events(since=int(since), until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "container": f"{project}-proxy"})
    return [e.get("Action", "") for e in events if e.get("Action", "").startswith("exec_")]


def _switch_under_watch(cfg, url: str, color: str, folder: Path, project: str) -> list[str]:
    """``switch color`` while requests run: no request fails, the proxy serves ``color`` and the volume's ``live``
    names it; the exec actions the engine reported for the proxy meanwhile."""
    time.sleep(1.1)  # the engine's event log has one-second resolution
    t0 = time.time()
    with Watcher(url) as w:
        r = run_cli("--json", "switch", color, config=cfg, timeout=120)
    assert r.code == 0, r.output
    assert health(url)["color"] == color and os.readlink(folder / "live") == f"colors/{color}"
    assert not w.errors, w.errors[:3]
    return _proxy_execs(project, t0)


def test_a_switch_renames_live_in_the_volume_folder_on_this_host_else_execs_in_the_proxy(env):
    """On a local engine the run volume is a folder of this host: the prepare of a color records it once it found
    there the random file it wrote through the engine, and a switch renames ``live`` in it without an exec in
    the proxy container. With no record (an engine elsewhere) the switch is that exec, and the next prepare
    records the folder again."""
    cfg, url, project = env["cfg"], env["url"], env["project"]
    stack = open_stack(load_config(cfg))
    record = stack.layout.deploy_dir / "run-volume.json"
    client = docker.DockerClient(base_url=f"unix://{SOCK}", timeout=60)
    folder = Path(client.volumes.get(f"{project}-run").attrs["Mountpoint"])
    assert json.loads(record.read_text()) == {"engine": f"unix://{SOCK}", "volume": f"{project}-run",
                                              "folder": str(folder)}
    assert not (folder / ".host-check").exists() and (folder / "colors").is_dir()
    live = health(url)["color"]
    idle = "green" if live == "blue" else "blue"
    assert run_cli("--json", "deploy", "status", config=cfg).json["colors"][idle]["services"]["api"]["state"] \
        == "RUNNING"

    assert _switch_under_watch(cfg, url, idle, folder, project) == []

    record.unlink()
    assert any(a.startswith("exec_start") for a in _switch_under_watch(cfg, url, live, folder, project))
    assert not record.exists()

    up = run_cli("--json", "stack", "up", config=cfg, timeout=300)  # prepares the colors again
    assert up.code == 0, up.output
    assert json.loads(record.read_text())["folder"] == str(folder)


def test_state_is_one_inspect_by_name_over_the_socket(env):
    """The runtime's state of a process, read without the SDK, is the SDK's; a container of that name without
    the project's label is not the project's."""
    cfg, project = load_config(env["cfg"]), env["project"]
    stack = open_stack(cfg)
    rt = DockerRuntime(cfg, stack.layout)
    live = health(env["url"])["color"]
    assert rt.state("api", live) == "RUNNING" and rt.state("postgres") == "RUNNING"
    listed = {u.unit: (u.state, u.pid) for u in rt.status()}
    assert rt._client is None  # no SDK client was made
    found = containers(project)
    assert listed == {unit: (container_state(c.attrs)[0], c.attrs["State"]["Pid"] or None)
                      for unit, c in found.items()}
    for unit, c in found.items():
        service, _, color = unit.partition("-") if unit.startswith(("api-", "worker-")) else (unit, "", "")
        assert rt.state(service, color or None) == container_state(c.attrs)[0], unit

    other = cfg.model_copy(update={"project": f"{project}x"})
    client = docker.DockerClient(base_url=f"unix://{SOCK}", timeout=60)
    stranger = client.containers.create(found["postgres"].image.id, ["true"], name=f"{project}x-postgres")
    try:
        rt_other = DockerRuntime(other, stack.layout)
        assert rt_other.state("postgres") == "ABSENT" and rt_other.state("redis") == "ABSENT"
    finally:
        stranger.remove(force=True)


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


def test_a_warm_rollback_on_a_local_engine_never_loads_the_docker_sdk(env):
    """Everything a warm rollback asks the engine (the warm api's state, the containers of both colors, the warm
    worker's start and the old worker's stop, both sent without waiting) goes over the unix socket without the
    SDK, whose import alone takes longer than the switch; the engine still carries both through."""
    cfg, url, project = env["cfg"], env["url"], env["project"]
    if run_cli("--json", "deploy", "status", config=cfg).json["colors"].get("green") is None:
        assert run_cli("--json", "deploy", "--version", "2.0.0", config=cfg, timeout=300).code == 0
    live = health(url)["color"]
    idle = "green" if live == "blue" else "blue"
    st = run_cli("--json", "deploy", "status", config=cfg).json
    assert st["colors"][idle]["services"]["api"]["state"] == "RUNNING"  # warm
    assert st["colors"][idle]["services"]["worker"]["state"] != "RUNNING"
    with Watcher(url) as w:  # -X importtime: every module the command imported, on its stderr
        r = subprocess.run([str(REPO / ".venv/bin/python"), "-X", "importtime", "-m", "aixsss_ops", "--config",
                            str(cfg), "--json", "rollback"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["color"] == idle, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "aixsss_ops.runtime.docker" in imported and "http.client" in imported  # the list is the command's
    assert not imported & {"docker", "requests", "urllib3"}, sorted(imported & {"docker", "requests", "urllib3"})
    assert health(url)["color"] == idle and not w.errors, w.errors[:3]
    poll(lambda: containers(project)[f"worker-{idle}"].status == "running", 60, 0.2, f"worker-{idle} running")
    poll(lambda: containers(project)[f"worker-{live}"].status == "exited", 90, 0.2, f"worker-{live} stopped")
