"""The swarm runtime on a real 3-node swarm (cluster.py: three dockerd in containers on this machine).

node1 is the manager: the infra (postgres, redis, s3), the proxy (label aixsss.proxy) and an api replica; node2
runs api replicas and workers (labels aixsss.api, aixsss.worker); node3 runs workers only. aixsss-ops talks to
node1's engine over TCP and reaches the published ports at node1's address. App images are built on node1 and go
to the other nodes through the embedded registry (S3 storage on the stack's object store); the base image is
loaded into every node beforehand (the registry itself runs from it), the runtime image into node1.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from tests.cli import EXE, run_cli
from tests.conftest import stack_config, state_tmpdir
from tests.integration.test_deploy import Watcher, health

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 120.0, "lock_timeout": 60.0,
          "backup": False}
BASE, RUNTIME = "aixsss/base:bookworm", "aixsss/runtime:bookworm"


def _toml_value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


@pytest.fixture(scope="module")
def multi(swarm_cluster, docker_images):
    c = swarm_cluster
    c.heal()
    before = c.swarm_objects()
    for i, labels in ((1, ("proxy", "api")), (2, ("api", "worker")), (3, ("worker",))):
        for label in labels:
            c.label(i, f"aixsss.{label}", "true")
    c.load_image(BASE)
    c.load_image(RUNTIME, nodes=[1])
    root = state_tmpdir("aixsss-swarm3-")
    project = f"m{int(time.time()) % 10**8}"
    cfg = stack_config(root, deploy=DEPLOY, supervisor={"start_timeout": 900.0})  # node2 and node3 pull the first
    # app image (~1 GB, the runtime image's layers) from the registry
    swarm = {"registry": "embedded", "replicas": {"api": 3, "worker": 2},
             "api_constraints": ["node.labels.aixsss.api==true"],
             "worker_constraints": ["node.labels.aixsss.worker==true"],
             "proxy_constraints": ["node.labels.aixsss.proxy==true"]}
    cfg.write_text(f'project = "{project}"\nruntime = "swarm"\nhost = "{c.ip(1)}"\nallow_public_host = true\n'
                   + cfg.read_text() + f'\n[docker]\nhost = "{c.engine_url(1)}"\n\n[swarm]\n'
                   + "\n".join(f"{k} = {_toml_value(v)}" for k, v in swarm.items()) + "\n")
    r = run_cli("stack", "up", config=cfg, timeout=1200)
    assert r.code == 0, r.output
    yield {"cfg": cfg, "cluster": c, "project": project, "url": f"http://{c.ip(1)}:{_proxy_port(cfg)}"}
    c.heal()
    run_cli("stack", "down", config=cfg, timeout=300)
    c.remove_swarm_objects(keep=before)


def _proxy_port(cfg) -> int:
    from aixsss_ops.config import load_config

    return load_config(cfg).ports.proxy


def nodes_of(cluster, project: str, service: str) -> list[int]:
    return sorted(i for i, _task in cluster.running_tasks(f"{project}-{service}"))


@pytest.mark.timeout(1800)  # its setup brings the stack up: the first app image travels to every node
def test_the_stack_spreads_over_the_nodes_by_their_labels(multi):
    c, p = multi["cluster"], multi["project"]
    assert nodes_of(c, p, "postgres") == nodes_of(c, p, "redis") == nodes_of(c, p, "s3") == [1]
    assert nodes_of(c, p, "proxy") == [1]
    assert len(nodes_of(c, p, "api-blue")) == 3 and set(nodes_of(c, p, "api-blue")) <= {1, 2}
    assert len(nodes_of(c, p, "worker-blue")) == 2 and set(nodes_of(c, p, "worker-blue")) <= {2, 3}
    assert nodes_of(c, p, "registry") == [1, 2, 3]  # the app image came to node2 and node3 through it
    assert health(multi["url"])["color"] == "blue"

    doc = run_cli("--json", "doctor", "--only", "swarm", config=multi["cfg"], timeout=120)
    assert doc.code == 0, doc.output
    st = run_cli("--json", "stack", "status", config=multi["cfg"], timeout=120)
    assert st.code == 0, st.output
    assert sorted(n["hostname"] for n in st.json["nodes"]) == sorted(c.name(i) for i in (1, 2, 3))


@pytest.mark.timeout(1800)
def test_a_worker_node_killed_mid_deploy_then_rollback_under_load(multi):
    """Node3 (workers only) dies while the new color boots: the deploy completes on the remaining nodes (its
    workers are rescheduled on node2) or is rolled back, and the live color answers every request throughout."""
    c, cfg, url = multi["cluster"], multi["cfg"], multi["url"]
    t0 = time.monotonic()
    live = health(url)
    with Watcher(url) as w:
        proc = subprocess.Popen([EXE, "--config", str(cfg), "--json", "deploy", "--version", "2.0.0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen: list[str] = []
        killed = threading.Event()

        def follow() -> None:
            for line in proc.stderr:
                seen.append(line)
                if "health gate" in line and not killed.is_set():
                    c.kill(3)
                    killed.set()

        t = threading.Thread(target=follow, daemon=True)  # the only reader of stderr: communicate() would race it
        t.start()
        proc.stdout.read()
        proc.wait(timeout=900)
        t.join(10)
    print(f"\ndeploy with node3 killed: exit {proc.returncode} after {time.monotonic() - t0:.0f}s; "
          f"{len(w.seen)} answers, {len(w.errors)} errors")
    assert killed.is_set(), "".join(seen)[-3000:]
    assert not w.errors and w.seen, (w.errors[:3], "".join(seen)[-3000:])
    after = health(url)
    if proc.returncode == 0:
        assert (after["color"], after["version"]) == ("green", "2.0.0")
        assert set(nodes_of(c, multi["project"], "worker-green")) == {2}  # node3's replica moved to node2
    else:  # rolled back: the live color never changed
        assert (after["color"], after["version"]) == (live["color"], live["version"]), "".join(seen)[-3000:]

    c.restart(3)
    c.wait_node_state(3, "ready", 90)
    if after["color"] == live["color"]:
        r = run_cli("--json", "deploy", "--version", "3.0.0", config=cfg, timeout=900)
        assert r.code == 0, r.output
    target = health(url)
    with Watcher(url) as w:
        rb = run_cli("--json", "rollback", config=cfg, timeout=300)
    assert rb.code == 0, rb.output
    assert rb.json["health_checks"] == 1  # the previous color was kept warm on the nodes
    back = health(url)
    assert back["color"] != target["color"] and back["version"] == live["version"]
    assert not w.errors and w.seen, w.errors[:3]
