"""A multi-node Docker Swarm on this one machine: N Docker engines, each ``dockerd`` in a container of the outer
engine (the node image: the project's base image + Debian's ``docker.io``), on one user-defined bridge with fixed
addresses, each with its own volume for ``/var/lib/docker`` (overlay2). The harness reaches node i's engine at
``tcp://<ip(i)>:2375``; the outer host reaches anything a node publishes in host mode at ``<ip(i)>:<port>``.

No pytest in here (the fixtures are in conftest.py). Everything created is named ``<prefix>-…`` and labelled
``io.aixsss.swarmtest=<prefix>``; a cluster holds a lock file for its prefix while it lives, so a second one with the
same prefix waits instead of removing the first one's nodes as leftovers.

Facts this relies on (Debian's dockerd 20.10 on these machines, issue 23): ``--privileged`` is refused (the bounding
set lacks CAP_SYS_RESOURCE), what works is ``--cap-add ALL --cap-drop SYS_RESOURCE``, seccomp and systempaths
unconfined and ``--device-cgroup-rule 'a *:* rwm'`` with an entrypoint that remounts /sys and the cgroup mounts
read-write and removes the pid files a killed node leaves behind. The kernel has no IPVS: services need
``endpoint_mode=dnsrr`` and ``publish mode=host``; the routing mesh does not route."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import ipaddress
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUTER_URL = "unix:///var/run/docker.sock"
BASE_IMAGE = "aixsss/base:bookworm"
NODE_IMAGE = "aixsss/swarm-node:bookworm"
PROBE_IMAGE = "aixsss-swarmtest/probe:1"  # busybox alone (sh, httpd, nc, wget): a service image of 2 MB
PREFIX = "aixsss-swarmtest"
SUBNET = "10.213.0.0/24"
LABEL = "io.aixsss.swarmtest"
L_RECIPE = f"{LABEL}.recipe"
ENGINE_PORT = 2375

# pid 1 of a node. A container's /sys and cgroup mounts are read-only (without --privileged): dockerd needs them
# writable to create its containers' cgroups. The cgroup mounts are the host's hierarchies: only a bind remount (this
# mount's flags, not the hierarchy's) is allowed; a plain remount says "mount point is busy". A node restarted after a
# SIGKILL keeps its filesystem: the pid files of the killed dockerd and its containerd are still there, and dockerd
# refuses to start over a live-looking one. --tls=false said explicitly, else dockerd 20.10 sleeps 15 s at start-up
# to show that plain TCP is deprecated.
ENTRYPOINT = r"""#!/bin/sh
set -eu
mount -o remount,rw /sys
while read -r _ mnt fstype _; do
    case "$mnt" in /sys/fs/cgroup|/sys/fs/cgroup/*) mount -o remount,bind,rw "$mnt" ;; esac
done </proc/self/mounts
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
exec dockerd --host "tcp://0.0.0.0:2375" --tls=false --host unix:///var/run/docker.sock \
    --storage-driver "${NODE_STORAGE_DRIVER:-overlay2}" "$@"
"""

NODE_DOCKERFILE = f"""FROM {{base}}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io \
busybox-static && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY entrypoint /usr/local/sbin/swarm-node
VOLUME /var/lib/docker
EXPOSE {ENGINE_PORT} 2377 7946 7946/udp 4789/udp
ENTRYPOINT ["/usr/local/sbin/swarm-node"]
"""

PROBE_DOCKERFILE = """FROM {node} AS src
FROM scratch
COPY --from=src /bin/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["sh"]
"""

# Debian's docker-registry without the package's htpasswd auth: plain HTTP on the cluster's bridge only
REGISTRY_CONFIG = """version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: :5000
"""

# the capability bounding set here lacks CAP_SYS_RESOURCE: --privileged is refused ("unable to apply caps")
NODE_HOST_CONFIG = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
}
# ``--security-opt systempaths=unconfined`` is the docker CLI's name for these two (the Engine API has no such
# security option): nothing of /proc and /sys masked or read-only
NODE_UNCONFINED_PATHS = {"MaskedPaths": [], "ReadonlyPaths": []}


class ClusterError(RuntimeError):
    """The harness could not do what it was asked; the message carries the nodes' log tails."""


def outer_client(timeout: int = 300):
    import docker

    return docker.DockerClient(base_url=OUTER_URL, timeout=timeout)


def _image(client, name: str):
    import docker

    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def _build(client, tag: str, dockerfile: str, files: dict[str, str], labels: dict[str, str], timeout: int) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in {"Dockerfile": dockerfile, **files}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    tail: list[str] = []
    for chunk in client.api.build(fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True, decode=True,
                                  labels=labels, timeout=timeout):
        if "error" in chunk:
            raise ClusterError(f"building {tag} failed: {chunk['error'].strip()}\n" + "\n".join(tail[-30:]))
        line = (chunk.get("stream") or "").rstrip()
        if line:
            tail.append(line)
    if _image(client, tag) is None:
        raise ClusterError(f"building {tag} left no image\n" + "\n".join(tail[-30:]))


def ensure_node_image(client=None, *, base: str = BASE_IMAGE, tag: str = NODE_IMAGE, force: bool = False) -> dict:
    """The node image (base + Debian's docker.io + the entrypoint), built when missing or when its recipe changed
    (not when the base is rebuilt: a node does not care). Returns ``{"image", "built", "seconds"}``."""
    client = client or outer_client()
    dockerfile = NODE_DOCKERFILE.format(base=base)
    recipe = hashlib.sha256((dockerfile + ENTRYPOINT).encode()).hexdigest()[:16]
    have = _image(client, tag)
    if have is not None and not force and (have.labels or {}).get(L_RECIPE) == recipe:
        return {"image": tag, "built": False, "seconds": 0.0}
    if _image(client, base) is None:
        raise ClusterError(f"the base image {base} is not on the outer engine (aixsss-ops images base builds it)")
    t0 = time.monotonic()
    _build(client, tag, dockerfile, {"entrypoint": ENTRYPOINT}, {L_RECIPE: recipe}, 1200)
    return {"image": tag, "built": True, "seconds": round(time.monotonic() - t0, 1)}


def ensure_probe_image(client=None, *, tag: str = PROBE_IMAGE, node_image: str = NODE_IMAGE) -> str:
    """A 2 MB image with busybox (sh, httpd, nc, wget, sleep) on the outer engine, for services of tests that need
    no Python; built from the node image's busybox-static when missing."""
    client = client or outer_client()
    if _image(client, tag) is None:
        ensure_node_image(client)
        _build(client, tag, PROBE_DOCKERFILE.format(node=node_image), {}, {LABEL: "probe"}, 300)
    return tag


class Cluster:
    """N swarm nodes as containers ``<prefix>-node1..N``; node indexes start at 1. Usage::

        c = Cluster(3); c.start(); c.form(managers=1); c.label(2, "aixsss.worker", "true")
        c.load_image("aixsss/app:1.0.0-…"); c.manager().services.create(...)   # node1 is the manager
        c.kill(3); c.wait_node_state(3, "down"); c.restart(3); c.wait_node_state(3, "ready")
        c.teardown()

    Addresses (``ip``, ``engine_url``, ``registry_address``) are final once ``start()`` has chosen the subnet."""

    def __init__(self, n: int = 3, *, prefix: str = PREFIX, subnet: str | None = None, image: str = NODE_IMAGE,
                 base_image: str = BASE_IMAGE, storage_driver: str = "overlay2", lock_wait: float = 300,
                 say: Callable[[str], None] | None = None):
        if n < 1:
            raise ValueError("a cluster has at least one node")
        # subnet None: SUBNET, or the next free /24 after it (10.213.1.0/24, …) when another network holds it
        self._auto_subnet = subnet is None
        net = ipaddress.ip_network(subnet or SUBNET)
        if net.num_addresses < n + 16:
            raise ValueError(f"subnet {net} is too small for {n} nodes")
        self.n, self.prefix, self.subnet, self.image, self.base_image = n, prefix, net, image, base_image
        self.storage_driver, self.lock_wait = storage_driver, lock_wait
        self.say = say or (lambda _msg: None)
        self.network = f"{prefix}-net"
        self.managers: list[int] = []
        self.node_ids: dict[int, str] = {}
        self.timings: dict[str, float] = {}
        self.killed: dict[int, float] = {}  # node -> time.monotonic() of its SIGKILL
        self._outer = None
        self._clients: dict[int, object] = {}
        self._lock: int | None = None

    # --- names and addresses -------------------------------------------------------------------------------------

    def nodes(self) -> range:
        return range(1, self.n + 1)

    def name(self, i: int) -> str:
        self._check(i)
        return f"{self.prefix}-node{i}"

    def volume(self, i: int) -> str:
        return f"{self.name(i)}-docker"

    def ip(self, i: int) -> str:
        self._check(i)
        return str(self.subnet.network_address + 10 + i)

    def engine_url(self, i: int) -> str:
        return f"tcp://{self.ip(i)}:{ENGINE_PORT}"

    def client(self, i: int, timeout: int = 120):
        """A docker SDK client of node i's engine (cached)."""
        import docker

        self._check(i)
        if i not in self._clients:
            self._clients[i] = docker.DockerClient(base_url=self.engine_url(i), timeout=timeout)
        return self._clients[i]

    def container(self, i: int):
        return self.outer.containers.get(self.name(i))

    @property
    def outer(self):
        if self._outer is None:
            self._outer = outer_client()
        return self._outer

    def _check(self, i: int) -> None:
        if not (isinstance(i, int) and 1 <= i <= self.n):
            raise ValueError(f"no node {i!r} (nodes are 1..{self.n})")

    # --- life cycle --------------------------------------------------------------------------------------------------

    def start(self) -> Cluster:
        """Build the node image when missing, remove leftovers of an earlier run with this prefix, create the network,
        the volumes and the node containers, and wait until every node's engine answers."""
        t0 = time.monotonic()
        self._acquire_lock()  # before anything is removed as a leftover: the lock says no live cluster owns them
        try:
            built = ensure_node_image(self.outer, base=self.base_image, tag=self.image)
            if built["built"]:
                self.timings["node_image_build"] = built["seconds"]
                self.say(f"built {self.image} in {built['seconds']}s")
            self._remove_all()
            self._create_network()
            t1 = time.monotonic()
            for i in self.nodes():
                self._run_node(i)
            for i in self.nodes():
                self._wait_engine(i, timeout=90)
            self.timings["start"] = round(time.monotonic() - t0, 2)
            self.timings["engines_up"] = round(time.monotonic() - t1, 2)
            return self
        except BaseException:
            self.teardown()
            raise

    def _create_network(self) -> None:
        from docker.types import IPAMConfig, IPAMPool

        for _ in range(64 if self._auto_subnet else 1):
            if self._auto_subnet:
                taken = [ipaddress.ip_network(c["Subnet"]) for n in self.outer.api.networks()
                         for c in ((n.get("IPAM") or {}).get("Config") or []) if ":" not in c.get("Subnet", ":")]
                while any(self.subnet.overlaps(t) for t in taken):
                    self.subnet = ipaddress.ip_network((int(self.subnet.network_address) + 256, 24))
            gateway = str(self.subnet.network_address + 1)
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(self.subnet), gateway=gateway)])
            try:
                self.outer.networks.create(self.network, driver="bridge", ipam=ipam, labels={LABEL: self.prefix})
                return
            except Exception as e:
                err = e  # a network made meanwhile by someone else took the subnet: look again
        raise ClusterError(f"creating network {self.network} ({self.subnet}) failed: {err}; another network holds "
                           "that subnet? Pass Cluster(subnet=...)")

    def _run_node(self, i: int) -> None:
        name = self.name(i)
        api = self.outer.api
        host_config = api.create_host_config(
            binds=[f"{self.volume(i)}:/var/lib/docker"], log_config={"type": "json-file", "config": {"max-size": "10m"}},
            **NODE_HOST_CONFIG)
        host_config.update(NODE_UNCONFINED_PATHS)
        try:
            self.outer.volumes.create(self.volume(i), labels={LABEL: self.prefix})
            c = api.create_container(
                self.image, name=name, hostname=name, detach=True, labels={LABEL: self.prefix},
                environment={"NODE_STORAGE_DRIVER": self.storage_driver}, host_config=host_config,
                command=["--insecure-registry", str(self.subnet)],  # a registry on the bridge (registry() or a node)
                networking_config=api.create_networking_config(
                    {self.network: api.create_endpoint_config(ipv4_address=self.ip(i))}),
            )
            api.start(c["Id"])
        except Exception as e:
            raise ClusterError(f"creating/starting node {i} ({name}) failed: {e}") from None

    def _wait_engine(self, i: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                if self.client(i).ping():
                    return
            except Exception as e:
                last = str(e)[:200]
            c = self.container(i)
            if c.status not in ("running", "created", "restarting"):
                raise ClusterError(f"node {i} ({self.name(i)}) exited ({c.status}, exit "
                                   f"{c.attrs['State'].get('ExitCode')}) before its engine answered\n{self.logs(i)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"node {i}'s engine {self.engine_url(i)} did not answer within {timeout:.0f}s "
                                   f"({last})\n{self.logs(i)}")
            time.sleep(0.2)

    def form(self, managers: int = 1, *, heartbeat: float | None = None, timeout: float = 60) -> Cluster:
        """node1 inits the swarm (advertising its ip), nodes 2..managers join as managers, the rest as workers; waits
        until the manager lists every node ready. ``heartbeat``: the dispatcher's heartbeat period in seconds
        (the engine's default 5 s when None; a node is marked down after a few missed heartbeats)."""
        if not 1 <= managers <= self.n:
            raise ValueError(f"managers must be 1..{self.n}")
        t0 = time.monotonic()
        spec = {"dispatcher_heartbeat_period": int(heartbeat * 1e9)} if heartbeat else {}
        try:
            self.client(1).swarm.init(advertise_addr=self.ip(1), listen_addr=f"{self.ip(1)}:2377", **spec)
        except Exception as e:
            raise ClusterError(f"swarm init on node 1 failed: {e}\n{self.logs(1)}") from None
        self.managers = [1]
        self.node_ids[1] = self.client(1).info()["Swarm"]["NodeID"]
        tokens = self.client(1).swarm.attrs["JoinTokens"]
        for i in range(2, self.n + 1):
            role = "Manager" if i <= managers else "Worker"
            try:
                self.client(i).swarm.join(remote_addrs=[f"{self.ip(1)}:2377"], join_token=tokens[role],
                                          advertise_addr=self.ip(i), listen_addr=f"{self.ip(i)}:2377")
            except Exception as e:
                raise ClusterError(f"node {i} could not join as {role.lower()}: {e}\n{self.logs(i)}") from None
            self.node_ids[i] = self.client(i).info()["Swarm"]["NodeID"]
            if role == "Manager":
                self.managers.append(i)
        for i in self.nodes():
            self.wait_node_state(i, "ready", timeout=timeout)
        self.timings["form"] = round(time.monotonic() - t0, 2)
        return self

    def teardown(self, wait: bool = True) -> float:
        """Remove the node containers, their volumes and the network; release the lock. Returns the seconds taken.
        Removing a volume takes as long as deleting the images a node holds (tens of seconds for a few GB):
        ``wait=False`` leaves the volumes to a detached ``docker volume rm`` (the engine serialises it with a later
        ``start()`` of the same names, which waits for it)."""
        t0 = time.monotonic()
        if self._lock is None and not self._acquire_lock(wait=False):
            return 0.0  # another live cluster with this prefix owns what is there (this one never started)
        try:
            self._remove_all(wait_volumes=wait)
        finally:
            for c in self._clients.values():
                with contextlib.suppress(Exception):
                    c.close()
            self._clients.clear()
            self._release_lock()
        self.timings["teardown"] = round(time.monotonic() - t0, 2)
        return self.timings["teardown"]

    def _remove_all(self, wait_volumes: bool = True) -> None:
        """Everything labelled with this prefix (containers, then volumes, then the network); tolerant of absence."""
        import docker

        flt = {"label": f"{LABEL}={self.prefix}"}
        found = self.outer.containers.list(all=True, filters=flt)
        with ThreadPoolExecutor(max(1, len(found))) as pool:
            list(pool.map(lambda c: _ignore_missing(lambda: c.remove(force=True)), found))
        vols = self.outer.volumes.list(filters=flt)
        cli = shutil.which("docker")
        if vols and not wait_volumes and cli:
            subprocess.Popen([cli, "--host", OUTER_URL, "volume", "rm", "--force", *(v.name for v in vols)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        elif vols:  # in parallel: each is as slow as deleting the images its node holds
            with ThreadPoolExecutor(len(vols)) as pool:
                list(pool.map(lambda v: _ignore_missing(lambda: v.remove(force=True)), vols))
        for net in self.outer.networks.list(names=[self.network]):
            if net.name == self.network:
                try:
                    net.remove()
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as e:
                    raise ClusterError(f"network {self.network} could not be removed: {e}") from None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.teardown()

    # --- lock ----------------------------------------------------------------------------------------------------------

    def _lock_path(self) -> Path:
        return Path(tempfile.gettempdir()) / f"{self.prefix}.lock"

    def _acquire_lock(self, wait: bool = True) -> bool:
        if self._lock is not None:
            return True
        fd = os.open(self._lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return False
                if time.monotonic() > deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise ClusterError(f"a cluster with prefix {self.prefix} is in use by pid {holder or '?'} "
                                       f"(lock {self._lock_path()}); waited {self.lock_wait:.0f}s") from None
                time.sleep(1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock = fd
        return True

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock, 0)
            os.close(self._lock)  # closing releases the flock
            self._lock = None

    # --- the swarm -----------------------------------------------------------------------------------------------------

    def manager(self, exclude: Iterable[int] = ()):
        """A client of a manager that answers (node1 unless it is down); skips killed nodes and ``exclude``."""
        skip = set(exclude) | set(self.killed)
        for i in self.managers:
            if i in skip:
                continue
            try:
                cl = self.client(i)
                if cl.info()["Swarm"].get("ControlAvailable"):
                    return cl
            except Exception:
                continue
        raise ClusterError(f"no manager answers (managers {self.managers}, killed {sorted(self.killed)})")

    def node_id(self, i: int) -> str:
        self._check(i)
        if i not in self.node_ids:
            raise ClusterError(f"node {i} has not joined the swarm (form() first)")
        return self.node_ids[i]

    def node(self, i: int) -> dict:
        """The manager's view of node i (``docker node inspect``)."""
        return self.manager().nodes.get(self.node_id(i)).attrs

    def node_state(self, i: int) -> str:
        """``ready``, ``down``, ``unknown`` or ``disconnected`` as the manager reports it."""
        return self.node(i)["Status"]["State"]

    def index_of(self, node_id_or_hostname: str) -> int:
        """The node index of a swarm node id (e.g. a task's NodeID) or hostname."""
        for i, nid in self.node_ids.items():
            if nid == node_id_or_hostname:
                return i
        for i in self.nodes():
            if self.name(i) == node_id_or_hostname:
                return i
        raise KeyError(node_id_or_hostname)

    def label(self, i: int, key: str, value: str) -> None:
        """Set a node label (``docker node update --label-add key=value``) through the manager."""
        node = self.manager().nodes.get(self.node_id(i))
        spec = dict(node.attrs["Spec"])
        spec["Labels"] = {**(spec.get("Labels") or {}), key: value}
        node.update(spec)

    def wait_node_state(self, i: int, state: str, timeout: float = 60, interval: float = 0.25) -> float:
        """Until the manager reports node i in ``state`` ("ready", "down", …); returns the seconds waited. Errors on a
        manager that does not answer are retried until the timeout (a leader election in progress)."""
        t0 = time.monotonic()
        last, err = "?", ""
        while True:
            try:
                last = self.node_state(i)
                if last == state:
                    return round(time.monotonic() - t0, 2)
            except Exception as e:
                err = f" (last error: {str(e)[:200]})"
            if time.monotonic() - t0 > timeout:
                raise ClusterError(f"node {i} did not become {state} within {timeout:.0f}s: last seen {last}{err}\n"
                                   f"{self.logs(i)}")
            time.sleep(interval)

    # --- services ------------------------------------------------------------------------------------------------

    def running_tasks(self, service: str) -> list[tuple[int, dict]]:
        """``(node index, task)`` of the service's tasks that run (desired and actual state ``running``)."""
        svc = self.manager().services.get(service)
        return [(self.index_of(t["NodeID"]), t) for t in svc.tasks()
                if t.get("DesiredState") == "running" and t["Status"]["State"] == "running"]

    def wait_running(self, service: str, replicas: int, timeout: float = 60,
                     where: Callable[[list[int]], bool] | None = None) -> list[int]:
        """Until ``replicas`` tasks of the service run (and ``where(node indexes)`` holds, when given); returns the
        sorted node indexes of the running tasks."""
        t0 = time.monotonic()
        seen, err = "?", ""
        while True:
            try:
                nodes = sorted(i for i, _ in self.running_tasks(service))
                seen = str(nodes)
                if len(nodes) == replicas and (where is None or where(nodes)):
                    return nodes
            except Exception as e:
                err = f" (last error: {str(e)[:200]})"
            if time.monotonic() - t0 > timeout:
                states = ""
                with contextlib.suppress(Exception):
                    states = "; ".join(f"{t['Status']['State']}/{t['DesiredState']} on {t.get('NodeID', '-')[:8]}: "
                                       f"{t['Status'].get('Err') or t['Status'].get('Message', '')}"
                                       for t in self.manager().services.get(service).tasks())
                raise ClusterError(f"service {service}: {replicas} running tasks expected within {timeout:.0f}s, "
                                   f"running on nodes {seen}{err}; tasks: {states}")
            time.sleep(0.25)

    def swarm_objects(self) -> dict[str, set[str]]:
        """The ids of the swarm's services, swarm-scoped networks (not ``ingress``), secrets and configs."""
        m = self.manager()
        return {
            "services": {x.id for x in m.services.list()},
            "networks": {x["Id"] for x in m.api.networks() if x.get("Scope") == "swarm" and x["Name"] != "ingress"},
            "secrets": {x.id for x in m.secrets.list()},
            "configs": {x.id for x in m.configs.list()},
        }

    def remove_swarm_objects(self, keep: dict[str, set[str]] | None = None, timeout: float = 60) -> list[str]:
        """Remove the services, networks, secrets and configs not in ``keep`` (a ``swarm_objects()`` of earlier):
        services first, then the rest once their tasks are gone. Returns what was removed."""
        import docker

        keep = keep or {}
        m = self.manager()
        removed = []
        for svc in m.services.list():
            if svc.id not in keep.get("services", set()):
                _ignore_missing(svc.remove)
                removed.append(f"service {svc.name}")
        deadline = time.monotonic() + timeout
        pending = [("network", x["Id"], x["Name"]) for x in m.api.networks()
                   if x.get("Scope") == "swarm" and x["Name"] != "ingress" and x["Id"] not in keep.get("networks", set())]
        pending += [("secret", x.id, x.name) for x in m.secrets.list() if x.id not in keep.get("secrets", set())]
        pending += [("config", x.id, x.name) for x in m.configs.list() if x.id not in keep.get("configs", set())]
        remove = {"network": m.api.remove_network, "secret": m.api.remove_secret, "config": m.api.remove_config}
        while pending:
            kind, oid, name = pending[0]
            try:
                remove[kind](oid)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:  # in use until the removed services' tasks are gone
                if time.monotonic() > deadline:
                    raise ClusterError(f"{kind} {name} could not be removed: {e}") from None
                time.sleep(0.5)
                continue
            pending.pop(0)
            removed.append(f"{kind} {name}")
        return removed

    def heal(self, timeout: float = 90) -> list[int]:
        """Start again the nodes that are not running (a test killed them) and wait until every node is ready;
        returns the nodes restarted."""
        restarted = []
        for i in self.nodes():
            if i in self.killed or self.container(i).status != "running":
                self.restart(i, timeout=timeout)
                restarted.append(i)
        for i in self.nodes():
            self.wait_node_state(i, "ready", timeout=timeout)
        return restarted

    # --- nodes dying and coming back ------------------------------------------------------------------------------

    def kill(self, i: int) -> float:
        """SIGKILL node i's container (a node dying mid-deploy); returns the time.monotonic() of the kill."""
        self.container(i).kill()
        self.killed[i] = time.monotonic()
        self._drop_client(i)
        return self.killed[i]

    def restart(self, i: int, timeout: float = 90) -> float:
        """Start a killed (or stopped) node again: same address and volume, so it rejoins by itself. Waits for its
        engine, not for the swarm to list it ready (``wait_node_state(i, "ready")``). Returns the seconds taken."""
        t0 = time.monotonic()
        c = self.container(i)
        if c.status == "running":
            c.kill()
            c.wait(timeout=30)
        self._drop_client(i)
        try:
            c.start()
        except Exception as e:
            raise ClusterError(f"restarting node {i} failed: {e}\n{self.logs(i)}") from None
        self._wait_engine(i, timeout=timeout)
        self.killed.pop(i, None)
        return round(time.monotonic() - t0, 2)

    def _drop_client(self, i: int) -> None:
        c = self._clients.pop(i, None)
        if c is not None:
            with contextlib.suppress(Exception):
                c.close()

    # --- images ------------------------------------------------------------------------------------------------------

    def load_image(self, name: str, nodes: Iterable[int] | None = None, via: str = "save") -> dict:
        """Copy image ``name`` from the outer engine into the nodes (the running ones by default) unless a node already
        has it with the same id. ``via="save"``: one ``docker save`` into a temporary file, loaded into the nodes in
        parallel (every layer travels, even those a node has). ``via="registry"``: pushed to the harness's registry
        (:meth:`registry`) and pulled by the nodes, then tagged ``name`` there: only the layers a node lacks travel.
        Returns ``{"id", "loaded": [nodes], "present": [nodes], "seconds"}``."""
        if via not in ("save", "registry"):
            raise ValueError("via is 'save' or 'registry'")
        t0 = time.monotonic()
        src = _image(self.outer, name)
        if src is None:
            raise ClusterError(f"image {name} is not on the outer engine")
        targets = [i for i in (nodes or self.nodes()) if i not in self.killed]
        present = [i for i in targets if getattr(_image(self.client(i), name), "id", None) == src.id]
        todo = [i for i in targets if i not in present]

        def check(i: int) -> None:
            got = getattr(_image(self.client(i), name), "id", None)
            if got != src.id:
                raise ClusterError(f"copying {name} into node {i} gave id {got}, not {src.id}")

        if todo and via == "registry":
            remote = self._push(name)

            def pull(i: int) -> None:
                repo, tag = _split(remote)
                try:
                    self.client(i).images.pull(repo, tag=tag)
                    self.client(i).api.tag(remote, *_split(name))
                    self.client(i).api.remove_image(remote, noprune=True)  # the image stays under ``name``
                except Exception as e:
                    raise ClusterError(f"node {i} could not pull {remote}: {e}\n{self.logs(i)}") from None
                check(i)

            with ThreadPoolExecutor(len(todo)) as pool:
                list(pool.map(pull, todo))
        elif todo:
            with tempfile.NamedTemporaryFile(prefix=f"{self.prefix}-image-", suffix=".tar", dir="/var/tmp") as tar:
                for chunk in self.outer.api.get_image(name, chunk_size=1 << 20):
                    tar.write(chunk)
                tar.flush()

                def load(i: int) -> None:
                    with open(tar.name, "rb") as f:
                        self.client(i).api.load_image(f)
                    check(i)

                with ThreadPoolExecutor(len(todo)) as pool:
                    list(pool.map(load, todo))
        return {"id": src.id, "loaded": todo, "present": present, "seconds": round(time.monotonic() - t0, 2)}

    # --- a registry for the nodes ---------------------------------------------------------------------------------

    def registry_address(self) -> str:
        """Where the nodes reach the harness's registry (an insecure registry for them: the whole subnet is)."""
        return f"{self.subnet.network_address + 5}:5000"

    def registry(self, timeout: float = 60) -> str:
        """Start (once) a registry for the nodes: Debian's ``docker-registry`` of the base image in a container
        ``<prefix>-registry`` of the outer engine, on the cluster's network at :meth:`registry_address`, and on
        127.0.0.1:<a free port> of the outer host for the outer engine's pushes (localhost needs no TLS there).
        Returns the outer host's address ``127.0.0.1:<port>``."""
        import docker

        name = f"{self.prefix}-registry"
        try:
            c = self.outer.containers.get(name)
            if c.status != "running":
                c.start()
                c.reload()
        except docker.errors.NotFound:
            api = self.outer.api
            self.outer.volumes.create(name, labels={LABEL: self.prefix})
            host_config = api.create_host_config(binds=[f"{name}:/var/lib/docker-registry"],
                                                 port_bindings={5000: ("127.0.0.1", None)})
            try:
                c = api.create_container(
                    self.base_image, name=name, detach=True, labels={LABEL: self.prefix}, ports=[5000],
                    environment={"CONFIG": REGISTRY_CONFIG}, host_config=host_config,
                    command=["sh", "-c", 'printf "%s" "$CONFIG" >/tmp/registry.yml && exec docker-registry serve '
                                         "/tmp/registry.yml"],
                    networking_config=api.create_networking_config({self.network: api.create_endpoint_config(
                        ipv4_address=self.registry_address().split(":")[0])}))
                api.start(c["Id"])
            except Exception as e:
                raise ClusterError(f"the registry container did not start: {e}") from None
            c = self.outer.containers.get(name)
        port = c.attrs["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"]
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        import requests

        while True:
            try:
                if requests.get(f"http://{address}/v2/", timeout=2, proxies={"http": "", "https": ""}).ok:
                    return address
            except requests.RequestException:
                pass
            c.reload()
            if c.status != "running" or time.monotonic() > deadline:
                log = c.logs(tail=30).decode(errors="replace")
                raise ClusterError(f"the registry {name} did not answer on {address} ({c.status})\n{log}")
            time.sleep(0.2)

    def _push(self, name: str) -> str:
        """Push outer image ``name`` to the registry; returns its name for the nodes (``<registry_address>/name``)."""
        outer = f"{self.registry()}/{name}"
        repo, tag = _split(outer)
        self.outer.api.tag(name, repo, tag)
        try:
            for chunk in self.outer.api.push(repo, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise ClusterError(f"pushing {name} to the registry failed: {chunk['error']}")
        finally:
            with contextlib.suppress(Exception):
                self.outer.api.remove_image(outer, noprune=True)
        return f"{self.registry_address()}/{name}"

    # --- looking at nodes ---------------------------------------------------------------------------------------------

    def logs(self, i: int, tail: int = 40) -> str:
        """The last lines of node i's dockerd log (its container's output), for error messages."""
        try:
            text = self.container(i).logs(tail=tail).decode(errors="replace").rstrip()
        except Exception as e:
            return f"--- node {i}: no log ({e})"
        return f"--- node {i} ({self.name(i)}) log tail:\n{text}"

    def memory(self, i: int) -> int:
        """Bytes of memory node i's container uses, as ``docker stats`` counts it (usage minus inactive file pages)."""
        stats = self.container(i).stats(stream=False, one_shot=True)["memory_stats"]
        inner = stats.get("stats") or {}
        return int(stats.get("usage", 0) - inner.get("total_inactive_file", inner.get("inactive_file", 0)))

    def exec(self, i: int, cmd: list[str] | str) -> tuple[int, str]:
        """Run a command in node i's container (not in a task): ``(exit code, output)``."""
        r = self.container(i).exec_run(cmd)
        return r.exit_code, r.output.decode(errors="replace")


def _split(name: str) -> tuple[str, str]:
    """``repo[:tag]`` -> (repo, tag); a port in the registry part is not a tag."""
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, "latest"
    return repo, tag


def _ignore_missing(fn: Callable[[], object]) -> None:
    import docker

    try:
        fn()
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:
        if "removal of container" in str(e) and "already in progress" in str(e):
            return
        raise
