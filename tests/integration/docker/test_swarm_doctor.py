"""Doctor's swarm checks against the real engine, a one-node swarm: services of a project of their own (a live color
at its count, an idle color at 0, a process whose constraint no node satisfies, an infra service whose command
exits 1, a global proxy), then `doctor --only swarm` through the CLI, and the node table `stack status` shows.
The multi-node situations (a down node, a lost quorum) are in tests/unit/test_swarm_checks.py."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from aixsss_ops.config import load_config
from aixsss_ops.runtime import swarm_nodes
from aixsss_ops.runtime.docker_engine import L_COLOR, L_PROJECT, L_SERVICE
from tests.cli import run_cli
from tests.conftest import state_tmpdir
from tests.integration.docker.conftest import SOCK

IMAGE = "aixsss/base:bookworm"


def _client():
    import docker

    return docker.DockerClient(base_url=f"unix://{SOCK}", timeout=60)


@pytest.fixture(scope="module")
def swarm(swarm_manager, request):
    """The test engine as a swarm manager (tests/integration/docker/conftest.py)."""
    client = _client()
    if not client.images.list(name=IMAGE):
        request.getfixturevalue("docker_images")  # `images base` builds it
    yield client
    client.close()


def _config(project: str, **docker: str) -> Path:
    root = state_tmpdir("aixsss-swarmdoctor-")
    lines = [f'project = "{project}"', 'runtime = "swarm"', f'state_dir = "{root / "state"}"']
    if docker:
        lines += ["", "[docker]"] + [f'{k} = "{v}"' for k, v in docker.items()]
    path = root / "ops.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def project(swarm):
    """Services named and labelled as the swarm runtime names them, of a project of their own."""
    from docker import types

    name = f"swarmdoctor{uuid.uuid4().hex[:8]}"

    def create(unit: str, role: str, command: list[str], color: str | None = None, **kw):
        labels = {L_PROJECT: name, L_SERVICE: role, **({L_COLOR: color} if color else {}), **kw.pop("labels", {})}
        return swarm.services.create(IMAGE, command, name=f"{name}-{unit}", labels=labels, container_labels=labels,
                                     stop_grace_period=1_000_000_000, **kw)

    sleep = ["sleep", "infinity"]
    try:
        create("api-blue", "api", sleep, "blue", mode=types.ServiceMode("replicated", replicas=2))
        create("api-green", "api", sleep, "green", mode=types.ServiceMode("replicated", replicas=0))
        create("worker-blue", "worker", sleep, "blue", mode=types.ServiceMode("replicated", replicas=1),
               constraints=["node.labels.swarmdoctor.nowhere==true"])
        create("redis", "redis", ["sh", "-c", "echo boom >&2; exit 1"],
               mode=types.ServiceMode("replicated", replicas=1),
               restart_policy=types.RestartPolicy(condition="none"))
        create("proxy", "proxy", sleep, mode=types.ServiceMode("global"), labels={swarm_nodes.L_LIVE: "blue"})
        _wait_settled(swarm, name)
        yield name
    finally:
        for s in swarm.services.list(filters={"label": f"{L_PROJECT}={name}"}):
            s.remove()


def _wait_settled(client, name: str, deadline_s: float = 90) -> None:
    """api-blue 2 running, the proxy 1, redis's task failed with its error, the worker pending with the scheduler's."""
    end = time.monotonic() + deadline_s
    while True:
        services = swarm_nodes.list_services(client, name)
        tasks = swarm_nodes.list_tasks(client, services)
        nodes = swarm_nodes.nodes_of(swarm_nodes.list_nodes(client))
        counts = {s["Spec"]["Name"].removeprefix(f"{name}-"): swarm_nodes.count_service(s, tasks, nodes)
                  for s in services}
        if (counts["api-blue"].running == 2 and counts["proxy"].running == 1
                and any("non-zero exit" in p.error for p in counts["redis"].problems)
                and any("no suitable node" in p.error for p in counts["worker-blue"].problems)):
            return
        if time.monotonic() > end:
            pytest.fail(f"the test services did not settle: {counts}")
        time.sleep(0.5)


def test_doctor_swarm_through_the_cli(swarm, project):
    r = run_cli("--json", "doctor", "--only", "swarm", config=_config(project))
    assert r.code == 3, r.output  # failures
    found = r.json["findings"]
    by = {}
    for f in found:
        by.setdefault(f["check"], []).append(f)
    hostname = swarm.info()["Name"]

    [eng] = by["swarm.engine"]
    assert eng["status"] == "ok" and "is a swarm manager" in eng["message"]
    # the one-node swarm: its node ready and active, a quorum of one (no fault tolerance, said so)
    [nodes] = by["swarm.nodes"]
    assert nodes["status"] == "ok" and "ready and active" in nodes["message"] and hostname in nodes["message"]
    [quorum] = by["swarm.quorum"]
    assert quorum["status"] == "ok"
    assert "1 of 1 manager(s) reachable, quorum 1" in quorum["message"] and "single manager" in quorum["message"]

    reps = {f.get("service"): f for f in by["swarm.replicas"]}
    worker = reps[f"{project}-worker-blue"]
    assert worker["status"] == "fail"
    assert f"the live color's worker is short of its count: {project}-worker-blue: 0/1 running" in worker["message"]
    assert "no suitable node (scheduling constraints not satisfied" in worker["message"]
    assert "node.labels.swarmdoctor.nowhere==true" in worker["fix"]
    redis = reps[f"{project}-redis"]
    assert redis["status"] == "fail"
    assert f"redis is short of its count: {project}-redis: 0/1 running" in redis["message"]
    assert f"failed on {hostname}: task: non-zero exit (1)" in redis["message"]
    assert "aixsss-ops stack logs redis" in redis["fix"]
    fine = reps[None]
    assert fine["status"] == "ok"
    assert fine["message"].startswith("live color blue; at their count:")  # from the proxy's label
    for part in ("api-blue 2/2", "proxy 1/1 (global)", "green idle (0 replicas)"):
        assert part in fine["message"]
    assert len(found) == 6, found

    # the human output names the failing services and their fixes too
    r = run_cli("doctor", "--only", "swarm.replicas", config=_config(project))
    assert r.code == 3
    assert f"{project}-redis: 0/1 running" in r.stdout and "fix:" in r.stdout


def test_node_table(swarm, project):
    cfg = load_config(_config(project))
    [row] = swarm_nodes.node_table(swarm, cfg)
    assert row["hostname"] == swarm.info()["Name"]
    assert (row["role"], row["state"], row["availability"], row["leader"]) == ("manager", "ready", "active", True)
    assert row["address"]
    assert row["tasks"] == 3  # api-blue's two and the proxy's one
    assert row["services"] == [f"{project}-api-blue", f"{project}-proxy"]


def test_an_unreachable_engine_fails_the_engine_check_and_skips_the_rest():
    r = run_cli("--json", "doctor", "--only", "swarm",
                config=_config("swarmdoctorgone", host="unix:///tmp/aixsss-no-such-engine.sock"))
    assert r.code == 3, r.output
    statuses = {f["check"]: f["status"] for f in r.json["findings"]}
    assert statuses == {"swarm.engine": "fail", "swarm.nodes": "skipped", "swarm.quorum": "skipped",
                        "swarm.replicas": "skipped"}
    eng = r.json["findings"][0]
    assert "unreachable" in eng["message"] and eng["fix"]


def test_no_swarm_checks_on_another_runtime(tmp_path):
    cfg = tmp_path / "ops.toml"
    cfg.write_text(f'project = "swarmdoctorlocal"\nruntime = "docker"\nstate_dir = "{tmp_path / "state"}"\n')
    r = run_cli("--json", "doctor", "--only", "swarm", config=cfg)
    assert r.code == 0, r.output
    assert r.json["findings"] == []
