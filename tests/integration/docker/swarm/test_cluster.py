"""The multi-node swarm harness itself (cluster.py): real dockerd nodes in containers, a real swarm between them,
a node SIGKILLed and brought back. The measured figures are printed (``pytest -s``)."""

from __future__ import annotations

import contextlib
import re
import time

import docker
import httpx
import pytest
from docker.types import EndpointSpec, ServiceMode

from tests.integration.docker.swarm.cluster import LABEL, Cluster, ClusterError, outer_client

WEB_PORT = 18080
# busybox httpd answering with the name of the node its task runs on (the service's hostname template)
WEB = ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
WORKERS = ["node.labels.aixsss.worker==true"]


def web_service(cluster: Cluster, image: str, name: str, networks: list[str] | None = None):
    return cluster.manager().services.create(
        image, name=name, command=WEB, hostname="{{.Node.Hostname}}", mode=ServiceMode("replicated", replicas=2),
        endpoint_spec=EndpointSpec(mode="dnsrr", ports=[
            {"Protocol": "tcp", "PublishedPort": WEB_PORT, "TargetPort": 8080, "PublishMode": "host"}]),
        constraints=WORKERS, networks=networks or [],
    )


def get(ip: str, port: int = WEB_PORT) -> str:
    with httpx.Client(trust_env=False, timeout=5) as http:
        r = http.get(f"http://{ip}:{port}/")
        r.raise_for_status()
        return r.text.strip()


def leftovers(prefix: str) -> list[str]:
    outer = outer_client(60)
    flt = {"label": f"{LABEL}={prefix}"}
    return ([f"container {c.name}" for c in outer.containers.list(all=True, filters=flt)]
            + [f"volume {v.name}" for v in outer.volumes.list(filters=flt)]
            + [f"network {n.name}" for n in outer.networks.list(names=[f"{prefix}-net"]) if n.name == f"{prefix}-net"])


def test_three_ready_nodes_one_manager_two_labelled_workers(swarm):
    nodes = {n.attrs["Description"]["Hostname"]: n.attrs for n in swarm.manager().nodes.list()}
    assert sorted(nodes) == [swarm.name(i) for i in (1, 2, 3)]
    for i in (1, 2, 3):
        node = nodes[swarm.name(i)]
        assert node["Status"]["State"] == "ready" and node["Spec"]["Availability"] == "active", node["Status"]
        assert node["Status"]["Addr"] == swarm.ip(i)
        assert node["Spec"]["Role"] == ("manager" if i == 1 else "worker")
        assert (node["Spec"].get("Labels") or {}).get("aixsss.worker") == (None if i == 1 else "true")
        info = swarm.client(i).info()
        assert info["Driver"] == "overlay2"
        assert info["Swarm"]["NodeID"] == swarm.node_id(i) and info["Swarm"]["LocalNodeState"] == "active"
        assert swarm.engine_url(i) == f"tcp://{swarm.ip(i)}:2375"
    assert nodes[swarm.name(1)]["ManagerStatus"]["Leader"] is True
    mem = {i: round(swarm.memory(i) / 2**20) for i in (1, 2, 3)}
    print(f"\nmemory per node (MiB): {mem}; cluster timings: {swarm.timings}")


def test_load_image_copies_only_what_a_node_lacks(swarm, swarm_probe_image):
    again = swarm.load_image(swarm_probe_image)
    assert again["loaded"] == [] and again["present"] == [1, 2, 3]
    for i in (1, 2, 3):
        assert swarm.client(i).images.get(swarm_probe_image).id == again["id"]
    with pytest.raises(ClusterError, match="not on the outer engine"):
        swarm.load_image("aixsss-swarmtest/no-such-image:0")


def test_load_image_through_the_registry(swarm, swarm_probe_image):
    outer = outer_client(60)
    name = "aixsss-swarmtest/probe:via-registry"
    outer.images.get(swarm_probe_image).tag(name)
    try:
        for i in (1, 2, 3):
            with contextlib.suppress(docker.errors.ImageNotFound):
                swarm.client(i).images.remove(name)
        first = swarm.load_image(name, via="registry")
        assert first["loaded"] == [1, 2, 3]
        for i in (1, 2, 3):
            tags = swarm.client(i).images.get(name).tags
            assert name in tags and not any(t.startswith(swarm.registry_address()) for t in tags), tags
        assert swarm.load_image(name, via="registry")["present"] == [1, 2, 3]
    finally:
        outer.images.remove(name)


def test_dnsrr_service_with_a_host_port_answers_at_each_workers_address(swarm, swarm_probe_image):
    net = swarm.manager().networks.create("aixsss-swarmtest-ov", driver="overlay", attachable=True)
    svc = web_service(swarm, swarm_probe_image, "web", networks=[net.id])
    assert svc.attrs["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
    assert swarm.wait_running("web", 2, timeout=60) == [2, 3]  # the workers only, one each (the host port)
    for i in (2, 3):
        deadline = time.monotonic() + 20
        while True:  # the task runs a moment before httpd listens
            try:
                assert get(swarm.ip(i)) == swarm.name(i)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    with pytest.raises(httpx.TransportError):
        get(swarm.ip(1))  # no task on the manager: nothing published there
    # across nodes over the overlay network: the service name resolves to both tasks' addresses (dnsrr: no virtual
    # IP), and each answers node2's task (glibc's resolver sorts the address of its own subnet first, so a plain
    # "wget http://web" from a task always picks the same one: each address is asked by itself)
    task = swarm.client(2).containers.list(filters={"label": "com.docker.swarm.service.name=web"})[0]
    out = task.exec_run(["nslookup", "web"]).output.decode()
    addrs = re.findall(r"(?m)^Address:\s*(\d+\.\d+\.\d+\.\d+)$", out)
    assert len(addrs) == 2, out
    names = {task.exec_run(["wget", "-qO-", f"http://{a}:8080/"]).output.decode().strip() for a in addrs}
    assert names == {swarm.name(2), swarm.name(3)}


def test_a_killed_worker_is_marked_down_its_tasks_rescheduled_and_it_rejoins(swarm, swarm_probe_image):
    image = swarm_probe_image
    manager = swarm.manager()
    manager.services.create(image, name="sleeper", command=["sleep", "3600"],
                            mode=ServiceMode("replicated", replicas=2), constraints=WORKERS)
    assert swarm.wait_running("sleeper", 2, timeout=60) == [2, 3]

    killed_at = swarm.kill(3)
    assert swarm.container(3).status == "exited"
    swarm.wait_node_state(3, "down", timeout=60)
    down = time.monotonic() - killed_at
    nodes = swarm.wait_running("sleeper", 2, timeout=90, where=lambda n: n == [2, 2])
    rescheduled = time.monotonic() - killed_at
    assert nodes == [2, 2]

    restart = swarm.restart(3)
    ready = swarm.wait_node_state(3, "ready", timeout=60)
    # and it takes work again
    manager.services.create(image, name="pinned", command=["sleep", "3600"],
                            constraints=[f"node.hostname=={swarm.name(3)}"])
    assert swarm.wait_running("pinned", 1, timeout=60) == [3]
    print(f"\nkilled node3: down after {down:.1f}s, its task rescheduled after {rescheduled:.1f}s; restart (engine "
          f"answers) {restart:.1f}s, then ready after {ready:.1f}s more")


def test_a_node_that_cannot_start_fails_with_its_log_and_leaves_nothing(docker_engine):
    cluster = Cluster(1, prefix="aixsss-swarmtest-bad", subnet="10.213.1.0/24", storage_driver="nosuchdriver")
    with pytest.raises(ClusterError) as e:
        cluster.start()
    message = str(e.value)
    assert "node 1 (aixsss-swarmtest-bad-node1) exited" in message and "log tail" in message
    assert "nosuchdriver" in message  # dockerd's own words
    assert leftovers("aixsss-swarmtest-bad") == []


def test_a_cluster_forms_and_tears_down_in_seconds(docker_engine):
    cluster = Cluster(2, prefix="aixsss-swarmtest-td", subnet="10.213.2.0/24")
    try:
        cluster.start()
        cluster.form(managers=2)
        assert cluster.managers == [1, 2]
        assert cluster.client(2).info()["Swarm"]["ControlAvailable"] is True
    finally:
        seconds = cluster.teardown()
    print(f"\n2 managers: {cluster.timings}")
    assert seconds < 5
    assert leftovers("aixsss-swarmtest-td") == []
