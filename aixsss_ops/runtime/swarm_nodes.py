"""What a Docker Swarm holds, read from the Engine API's plain dicts (``docker node|service|task inspect``): its
nodes, the managers' quorum, and how many tasks of each service run against how many it should have.

Pure functions of those dicts, so that a test can hand them a down node or a lost quorum that one machine cannot
stage; ``node_table`` and the ``list_*`` helpers are the only callers of the engine (the SDK's ``attrs``).
Used by doctor's swarm checks and by ``stack status``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aixsss_ops.runtime.docker_engine import L_COLOR, L_PROJECT, L_SERVICE

if TYPE_CHECKING:
    import docker

    from aixsss_ops.config import OpsConfig

RUNNING = "running"
L_LIVE = "io.aixsss.live"  # on the proxy service: the color every proxy node was last switched to
MAX_PROBLEMS = 3  # task errors reported per service


# -- nodes --
@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    role: str  # manager | worker
    state: str  # ready | down | unknown | disconnected
    availability: str  # active | pause | drain
    leader: bool = False
    reachability: str | None = None  # managers: reachable | unreachable | unknown
    address: str = ""
    engine: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def manager(self) -> bool:
        return self.role == "manager"

    @property
    def up(self) -> bool:
        return self.state == "ready"

    @property
    def reachable_manager(self) -> bool:
        """A manager that takes part in the Raft quorum (its ``ManagerStatus.Reachability``)."""
        return self.manager and self.reachability == "reachable"


def node(attrs: dict) -> Node:
    spec, status, desc = attrs.get("Spec") or {}, attrs.get("Status") or {}, attrs.get("Description") or {}
    mgr = attrs.get("ManagerStatus") or {}
    addr = status.get("Addr") or ""
    if addr in ("", "0.0.0.0") and mgr.get("Addr"):  # a manager may report 0.0.0.0: its Raft address says more
        addr = mgr["Addr"].rsplit(":", 1)[0]
    return Node(
        id=attrs.get("ID", ""),
        hostname=desc.get("Hostname") or attrs.get("ID", "")[:12],
        role=spec.get("Role") or ("manager" if mgr else "worker"),
        state=status.get("State") or "unknown",
        availability=spec.get("Availability") or "active",
        leader=bool(mgr.get("Leader")),
        reachability=mgr.get("Reachability") if mgr else None,
        address=addr,
        engine=(desc.get("Engine") or {}).get("EngineVersion", ""),
        labels=dict(spec.get("Labels") or {}),
    )


def nodes_of(attrs_list: list[dict]) -> list[Node]:
    """Managers first (the leader at their head), then by hostname."""
    return sorted((node(a) for a in attrs_list), key=lambda n: (not n.manager, not n.leader, n.hostname))


# -- quorum --
def quorum_size(managers: int) -> int:
    """Raft's majority: how many managers must be reachable for the swarm to be changed."""
    return managers // 2 + 1


def fault_tolerance(managers: int) -> int:
    """How many managers may be lost without losing the quorum."""
    return max(0, (managers - 1) // 2)


@dataclass(frozen=True)
class Quorum:
    managers: int
    reachable: int
    leader: str | None  # hostname
    unreachable: tuple[str, ...] = ()

    @property
    def needed(self) -> int:
        return quorum_size(self.managers)

    @property
    def lost(self) -> bool:
        return self.managers == 0 or self.reachable < self.needed

    @property
    def margin(self) -> int:
        """How many more reachable managers may be lost before the quorum is (0: the next loss loses it)."""
        return self.reachable - self.needed

    @property
    def even(self) -> bool:
        return self.managers > 0 and self.managers % 2 == 0


def quorum(nodes: list[Node]) -> Quorum:
    managers = [n for n in nodes if n.manager]
    leader = next((n.hostname for n in managers if n.leader), None)
    return Quorum(len(managers), sum(n.reachable_manager for n in managers), leader,
                  tuple(n.hostname for n in managers if not n.reachable_manager))


# -- services and their tasks --
@dataclass(frozen=True)
class TaskProblem:
    """Why a task of a service is not running (or why an earlier one stopped); ``count`` tasks said the same."""

    slot: str  # ".1" (replicated) or the node's hostname (global)
    node: str  # hostname, or "" when the task was never placed
    state: str  # pending, rejected, failed, starting, ...
    error: str  # Status.Err, else Status.Message
    timestamp: str = ""
    count: int = 1

    def __str__(self) -> str:
        where = f"on {self.node}" if self.node else "on no node"
        which = f"{self.count} tasks (newest {self.slot})" if self.count > 1 else f"task {self.slot}"
        return f"{which} {self.state} {where}: {self.error}"


@dataclass
class ServiceCount:
    name: str
    id: str
    role: str  # io.aixsss.service: the process role or the infra service
    color: str | None  # io.aixsss.color: app services only
    mode: str  # replicated | global | job
    desired: int  # replicas, or the nodes a global service should run on
    running: int  # tasks running (and meant to) on nodes that are up
    constraints: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()  # hostnames of the running tasks
    problems: list[TaskProblem] = field(default_factory=list)
    update: str | None = None  # UpdateStatus.State when the last update paused or rolled back
    update_message: str = ""

    @property
    def short(self) -> bool:
        return self.running < self.desired

    @property
    def app(self) -> bool:
        return self.color is not None

    @property
    def counts(self) -> str:
        return f"{self.running}/{self.desired}" + (" (global)" if self.mode == "global" else "")


def _mode(spec: dict) -> str:
    mode = spec.get("Mode") or {}
    if "Global" in mode:
        return "global"
    if "Replicated" in mode:
        return "replicated"
    return "job"  # ReplicatedJob / GlobalJob: counted by completions, not judged here


def _task_node(task: dict) -> str:
    return task.get("NodeID") or ""


def _ts(task: dict) -> str:
    return (task.get("Status") or {}).get("Timestamp") or task.get("UpdatedAt") or ""


def task_running(task: dict, up: set[str]) -> bool:
    """Running, meant to run, on a node that is up (a down node's last report says nothing about now)."""
    return ((task.get("Status") or {}).get("State") == RUNNING and task.get("DesiredState") == RUNNING
            and _task_node(task) in up)


def count_service(service: dict, tasks: list[dict], nodes: list[Node]) -> ServiceCount:
    """Running tasks against the count of one service: its replicas, or for a global service the nodes that are up
    on which the orchestrator wants a task (it makes none where the constraints exclude a node or it is drained).
    ``tasks`` may hold other services' tasks and the service's history: both are sorted out here."""
    spec = service.get("Spec") or {}
    labels = spec.get("Labels") or {}
    sid = service.get("ID", "")
    mine = [t for t in tasks if t.get("ServiceID") == sid]
    up = {n.id for n in nodes if n.up}
    host = {n.id: n.hostname for n in nodes}
    mode = _mode(spec)
    running = [t for t in mine if task_running(t, up)]
    if mode == "global":
        desired = len({_task_node(t) for t in mine if t.get("DesiredState") == RUNNING and _task_node(t) in up})
    elif mode == "replicated":
        desired = int((spec.get("Mode") or {}).get("Replicated", {}).get("Replicas", 1))
    else:
        desired = 0
    out = ServiceCount(
        name=spec.get("Name", sid[:12]), id=sid, role=labels.get(L_SERVICE, ""), color=labels.get(L_COLOR),
        mode=mode, desired=desired, running=len(running),
        constraints=tuple(((spec.get("TaskTemplate") or {}).get("Placement") or {}).get("Constraints") or ()),
        nodes=tuple(sorted(host.get(_task_node(t), _task_node(t)[:12]) for t in running)),
    )
    upd = service.get("UpdateStatus") or {}
    if upd.get("State") in ("paused", "rollback_paused", "rollback_started", "rollback_completed"):
        out.update, out.update_message = upd["State"], upd.get("Message", "")
    if out.short:
        out.problems = problems(mine, running, host, mode)
    return out


def problems(tasks: list[dict], running: list[dict], host: dict[str, str], mode: str) -> list[TaskProblem]:
    """The newest distinct reasons among a service's tasks that are not running: an error of a task still meant to
    run (the scheduler's reason a task is pending), then the errors of the tasks that ended (a non-zero exit, an
    image that could not be pulled), then the state of the others (starting, preparing). Tasks that say the same
    on the same node are one problem with a count."""
    ok = {t.get("ID") for t in running}
    rest = [t for t in tasks if t.get("ID") not in ok]

    def rank(t: dict) -> int:
        has_err = bool((t.get("Status") or {}).get("Err"))
        wanted = t.get("DesiredState") == RUNNING
        return 0 if has_err and wanted else 1 if has_err else 2 if wanted else 3

    groups: dict[tuple[str, str], TaskProblem] = {}
    for t in sorted(sorted(rest, key=_ts, reverse=True), key=rank):
        if rank(t) == 3:
            continue  # shut down without an error: replaced by an update or a scale-down
        st = t.get("Status") or {}
        nid = _task_node(t)
        hostname = host.get(nid, nid[:12])
        error = st.get("Err") or st.get("Message") or ""
        key = (error, hostname)
        if key in groups:
            p = groups[key]
            groups[key] = TaskProblem(p.slot, p.node, p.state, p.error, p.timestamp, p.count + 1)
            continue
        slot = f".{t['Slot']}" if mode != "global" and t.get("Slot") else (hostname or "-")
        groups[key] = TaskProblem(slot, hostname, st.get("State", "?"), error, _ts(t))
    return list(groups.values())[:MAX_PROBLEMS]


def live_color(services: list[dict], recorded: str | None = None) -> str | None:
    """The color taking traffic: the label the switch puts on the proxy service, else the deploy state's."""
    for s in services:
        labels = (s.get("Spec") or {}).get("Labels") or {}
        if labels.get(L_SERVICE) == "proxy" and labels.get(L_LIVE):
            return labels[L_LIVE]
    return recorded


# -- the engine --
def list_nodes(client: docker.DockerClient) -> list[dict]:
    return client.api.nodes()


def list_services(client: docker.DockerClient, project: str) -> list[dict]:
    return client.api.services(filters={"label": f"{L_PROJECT}={project}"})


def list_tasks(client: docker.DockerClient, services: list[dict]) -> list[dict]:
    """Every task the swarm keeps of these services (its history included: ``TaskHistoryRetentionLimit``)."""
    ids = [s["ID"] for s in services]
    return client.api.tasks(filters={"service": ids}) if ids else []


def node_table(client: docker.DockerClient, cfg: OpsConfig) -> list[dict]:
    """One row per node: hostname, role, state, availability, leader, address, engine version, and the project's
    tasks running there (count and service names)."""
    nodes = nodes_of(list_nodes(client))
    services = list_services(client, cfg.project)
    names = {s["ID"]: s["Spec"]["Name"] for s in services}
    up = {n.id for n in nodes if n.up}
    per_node: dict[str, Counter] = {}
    for t in list_tasks(client, services):
        if task_running(t, up):
            per_node.setdefault(_task_node(t), Counter())[names.get(t.get("ServiceID"), "?")] += 1
    rows = []
    for n in nodes:
        there = per_node.get(n.id, Counter())
        rows.append({"hostname": n.hostname, "id": n.id[:12], "role": n.role, "state": n.state,
                     "availability": n.availability, "leader": n.leader, "reachability": n.reachability,
                     "address": n.address, "engine": n.engine, "tasks": sum(there.values()),
                     "services": sorted(there)})
    return rows
