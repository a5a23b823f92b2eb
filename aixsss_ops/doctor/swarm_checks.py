"""Doctor's Docker Swarm checks (``runtime = "swarm"``; none otherwise): the engine aixsss-ops talks to is a manager,
every node is up and active, the managers hold their quorum, and every service of the project runs its count of
tasks (a color that is not live may sit at 0 replicas: that is how an idle color waits).

Each check is a function of the Context (it connects to the engine) over a pure function of the Engine API's dicts
(``*_findings``), which the unit tests call with the multi-node situations one machine cannot stage.
"""

from __future__ import annotations

from aixsss_ops.doctor.context import Context
from aixsss_ops.findings import Finding
from aixsss_ops.runtime import swarm_nodes as sw

INIT_FIX = ("make it one: `docker swarm init` (a one-node swarm), or point docker.host in ops.toml at a manager of "
            "the cluster (`docker node ls` on a manager lists them)")
NO_LEADER_FIX = ("bring the unreachable managers back (start dockerd on them); when they are gone for good, "
                 "`docker swarm init --force-new-cluster` on a surviving manager and join new ones")


def _active(ctx: Context) -> bool:
    return ctx.cfg.runtime == "swarm"


def _client(ctx: Context):
    from aixsss_ops.runtime.docker_engine import connect

    return connect(ctx.cfg)


def _manager_error(name: str, e: Exception) -> Finding:
    """The managers could not answer (no leader: the quorum is lost; or the engine is not a manager)."""
    msg = " ".join(str(getattr(e, "explanation", None) or e).split())[:300]
    if "leader" in msg or "quorum" in msg:
        return Finding(name, "fail", f"the managers cannot answer: {msg}", NO_LEADER_FIX)
    return Finding(name, "fail", f"the swarm manager did not answer: {msg}", INIT_FIX)


def _cluster(ctx: Context, name: str, services: bool = False):
    """(nodes, services, tasks) as the manager lists them, or the finding saying why it could not."""
    import docker

    client = _client(ctx)
    try:
        nodes = sw.list_nodes(client)
        svcs = sw.list_services(client, ctx.cfg.project) if services else []
        tasks = sw.list_tasks(client, svcs) if services else []
    except docker.errors.APIError as e:
        return _manager_error(name, e)
    finally:
        client.close()
    return nodes, svcs, tasks


# -- swarm.engine --
def engine_findings(info: dict, host: str) -> list[Finding]:
    """From ``docker info``: the engine is an active swarm node that can manage the swarm (``ControlAvailable``)."""
    name = "swarm.engine"
    s = info.get("Swarm") or {}
    state = s.get("LocalNodeState") or "inactive"
    here = f"the engine at {host} ({info.get('Name', '?')})"
    if state == "inactive":
        return [Finding(name, "fail", f"{here} is not part of a swarm", INIT_FIX)]
    if state == "locked":
        return [Finding(name, "fail", f"{here} is a locked swarm manager (autolock, after a restart)",
                        "`docker swarm unlock` on it with the unlock key")]
    if state != "active":
        err = f": {s['Error']}" if s.get("Error") else ""
        return [Finding(name, "fail", f"{here} is in swarm state {state}{err}",
                        "wait for it to join, or `docker swarm leave` it and join again; " + INIT_FIX)]
    if not s.get("ControlAvailable"):
        managers = ", ".join(m.get("Addr", "?") for m in s.get("RemoteManagers") or []) or "none known"
        return [Finding(name, "fail", f"{here} is a swarm worker: services can only be managed on a manager "
                                      f"(managers: {managers})",
                        "point docker.host in ops.toml at a manager, or `docker node promote` this node")]
    cluster = str((s.get("Cluster") or {}).get("ID", "?"))[:12]
    return [Finding(name, "ok", f"{here} is a swarm manager: {s.get('Nodes', '?')} node(s), "
                                f"{s.get('Managers', '?')} manager(s), cluster {cluster}")]


def engine(ctx: Context) -> list[Finding]:
    from aixsss_ops.errors import OpsError
    from aixsss_ops.runtime.docker_engine import engine_host

    if not _active(ctx):
        return []
    try:
        client = _client(ctx)
    except OpsError as e:
        return [Finding("swarm.engine", "fail", e.message, e.hint)]
    try:
        info = client.info()
    finally:
        client.close()
    return engine_findings(info, engine_host(ctx.cfg))


# -- swarm.nodes --
def _stranded(node: sw.Node, tasks: list[dict], names: dict[str, str]) -> list[str]:
    """The project's tasks still assigned to a node and meant to run there (not rescheduled yet)."""
    return sorted({names.get(t.get("ServiceID"), "?") for t in tasks
                   if t.get("NodeID") == node.id and t.get("DesiredState") == sw.RUNNING})


def node_findings(node_attrs: list[dict], services: list[dict] | None = None,
                  tasks: list[dict] | None = None) -> list[Finding]:
    """Every node ready and active. A manager that is down fails (it counts against the quorum); a worker that is
    down warns, saying whether the project's tasks left it; a drained or paused node warns."""
    name = "swarm.nodes"
    nodes = sw.nodes_of(node_attrs)
    names = {s.get("ID"): (s.get("Spec") or {}).get("Name", "?") for s in services or []}
    out = []
    for n in nodes:
        what = f"{n.role} {n.hostname}" + (f" ({n.address})" if n.address else "")
        if not n.up or (n.manager and n.reachability == "unreachable"):
            left = _stranded(n, tasks or [], names)
            if left:
                moved = (f"{len(left)} task(s) of the project still assigned to it, not rescheduled yet: "
                         + ", ".join(left))
            else:
                moved = "no task of the project is assigned to it (rescheduled on other nodes, if it had any)"
            state = n.state if n.state != "ready" else f"Raft {n.reachability}"
            drained = f", availability {n.availability}" if n.availability != "active" else ""
            if n.manager:
                out.append(Finding(name, "fail", f"{what} is {state}{drained}: it counts against the managers' "
                                                 f"quorum; {moved}",
                                   f"start dockerd on {n.hostname}; if it is gone for good, `docker node demote "
                                   f"{n.hostname}` and `docker node rm --force {n.hostname}`, then add a manager"))
            else:
                out.append(Finding(name, "warn", f"{what} is {state}{drained}; {moved}",
                                   f"start dockerd on {n.hostname}, or `docker node rm --force {n.hostname}` "
                                   "if it is gone for good"))
        elif n.availability != "active":
            effect = ("drained: no task is scheduled there and its tasks were moved away"
                      if n.availability == "drain" else "paused: no new task is scheduled there")
            out.append(Finding(name, "warn", f"{what} is {effect}",
                               f"when its maintenance is over: `docker node update --availability active {n.hostname}`"))
    if not out:
        managers = sum(n.manager for n in nodes)
        out.append(Finding(name, "ok", f"{len(nodes)} node(s) ready and active ({managers} manager(s), "
                                       f"{len(nodes) - managers} worker(s)): "
                                       + ", ".join(n.hostname for n in nodes)))
    return out


def nodes(ctx: Context) -> list[Finding]:
    if not _active(ctx):
        return []
    got = _cluster(ctx, "swarm.nodes", services=True)
    if isinstance(got, Finding):
        return [got]
    return node_findings(*got)


# -- swarm.quorum --
def quorum_findings(node_attrs: list[dict]) -> list[Finding]:
    """Reachable managers against the majority floor(n/2)+1: lost fails; for three managers or more, a quorum
    the next loss would lose warns; an even number of managers warns (it tolerates no more losses than one
    fewer)."""
    name = "swarm.quorum"
    q = sw.quorum(sw.nodes_of(node_attrs))
    counts = f"{q.reachable} of {q.managers} manager(s) reachable, quorum {q.needed}"
    gone = f" (unreachable: {', '.join(q.unreachable)})" if q.unreachable else ""
    even = (f"; an even number of managers ({q.managers}) tolerates no more losses than {q.managers - 1}: "
            "add one or demote one" if q.even else "")
    if q.lost:
        return [Finding(name, "fail", f"quorum lost: {counts}{gone}: nothing can be deployed, scaled or "
                                      f"rescheduled{even}", NO_LEADER_FIX)]
    leader = f", leader {q.leader}" if q.leader else ", no leader elected yet"
    if q.margin == 0 and q.managers >= 3:
        return [Finding(name, "warn", f"{counts}{leader}{gone}: one more lost manager loses the quorum{even}",
                        "bring the unreachable managers back, or replace them (`docker node promote` a worker)")]
    if q.even:
        return [Finding(name, "warn", f"{counts}{leader}{even}",
                        "run an odd number of managers (3 tolerate one loss, 5 two): `docker node promote` a "
                        "worker or `docker node demote` a manager")]
    note = ("; a single manager: losing it stops all changes (3 managers tolerate one loss)" if q.managers == 1
            else f"; tolerates {q.margin} more lost manager(s)" if q.unreachable
            else f"; tolerates {sw.fault_tolerance(q.managers)} lost manager(s)")
    return [Finding(name, "ok", f"{counts}{leader}{gone}{note}")]


def quorum(ctx: Context) -> list[Finding]:
    if not _active(ctx):
        return []
    got = _cluster(ctx, "swarm.quorum")
    if isinstance(got, Finding):
        return [got]
    return quorum_findings(got[0])


# -- swarm.replicas --
def _fix(c: sw.ServiceCount) -> str:
    errors = " ".join(p.error for p in c.problems).lower()
    if "no suitable node" in errors or "insufficient resources" in errors:
        where = f" (constraints: {', '.join(c.constraints)})" if c.constraints else ""
        return (f"no node can take its tasks{where}: label a node (`docker node update --label-add k=v NODE`), "
                "relax the constraints in [swarm], or free CPU/memory")
    if "no such image" in errors or ("image" in errors and ("pull" in errors or "not found" in errors)):
        return "the nodes cannot get its image: `aixsss-ops images push` (and check [swarm] registry)"
    unit = f"{c.role}-{c.color}" if c.app else c.role
    logs = f"`aixsss-ops stack logs {unit}`, " if c.role else ""
    return f"see {logs}`docker service logs {c.name}` and `docker service ps --no-trunc {c.name}`"


def _detail(c: sw.ServiceCount) -> str:
    on = f" on {', '.join(c.nodes)}" if c.nodes else ""
    why = "; ".join(str(p) for p in c.problems)
    return f"{c.name}: {c.counts} running{on}" + (f"; {why}" if why else "")


def replica_findings(services: list[dict], tasks: list[dict], node_attrs: list[dict],
                     recorded_live: str | None = None) -> list[Finding]:
    """Each service of the project against its count. Short fails for an infra service and for an app service of
    the live color (all colors with replicas, when no live color is known); a color that is not live is reported
    for information only (idle at 0 replicas, or warm for a rollback). A live service scaled to 0, a global infra
    service on no node, and an update paused or rolled back warn."""
    name = "swarm.replicas"
    nodes = sw.nodes_of(node_attrs)
    live = sw.live_color(services, recorded_live)
    counts = sorted((sw.count_service(s, tasks, nodes) for s in services), key=lambda c: (c.app, c.color or "", c.name))
    if not counts:
        return [Finding(name, "warn", "no service of the project in the swarm", "`aixsss-ops stack up`")]
    out: list[Finding] = []
    fine: list[str] = []
    info: dict[str, list[sw.ServiceCount]] = {}
    for c in counts:
        if c.mode == "job":
            continue
        not_live = c.app and live is not None and c.color != live
        if not_live:
            info.setdefault(c.color, []).append(c)
            continue
        if c.short:
            role = f"the live color's {c.role}" if c.app and live else (c.role or "service")
            out.append(Finding(name, "fail", f"{role} is short of its count: {_detail(c)}", _fix(c), service=c.name))
        elif c.desired == 0:
            if c.mode == "global":
                where = f" (constraints: {', '.join(c.constraints)})" if c.constraints else ""
                out.append(Finding(name, "fail" if not c.app else "warn",
                                   f"{c.name} runs on no node: no node that is up and active allows it{where}",
                                   "check the nodes (`docker node ls`) and [swarm] proxy_constraints", service=c.name))
            else:
                bad = c.app and c.role == "api"
                out.append(Finding(name, "fail" if bad else "warn",
                                   f"{c.name} is scaled to 0 replicas" + (" while its color is live" if c.app else ""),
                                   "`aixsss-ops stack up` (or `docker service scale " + f"{c.name}=1`)",
                                   service=c.name))
        else:
            fine.append(f"{c.role or c.name}{'-' + c.color if c.color else ''} {c.counts}")
        if c.update:
            out.append(Finding(name, "warn", f"the last update of {c.name} is {c.update.replace('_', ' ')}: "
                                             f"{c.update_message}",
                               f"`docker service ps --no-trunc {c.name}`; redeploy, or `docker service rollback "
                               f"{c.name}`", service=c.name))
    for color, cs in sorted(info.items()):
        if all(c.desired == 0 for c in cs):
            fine.append(f"{color} idle (0 replicas)")
            continue
        state = ", ".join(f"{c.role} {c.counts}" for c in cs)
        short = [c for c in cs if c.short]
        if short:
            out.append(Finding(name, "ok", f"{color} (not live) is short of its count, for information: "
                                           + "; ".join(_detail(c) for c in short),
                               f"a rollback to {color} would wait for these: " + _fix(short[0])))
        else:
            fine.append(f"{color} (not live, warm) {state}")
    if fine:
        note = "" if not any(c.app for c in counts) else f"live color {live}; " if live else "no live color known; "
        out.append(Finding(name, "ok", f"{note}at their count: " + ", ".join(fine)))
    return out


def replicas(ctx: Context) -> list[Finding]:
    if not _active(ctx):
        return []
    got = _cluster(ctx, "swarm.replicas", services=True)
    if isinstance(got, Finding):
        return [got]
    node_attrs, services, tasks = got
    state = ctx.dep.deploy_state.load()
    return replica_findings(services, tasks, node_attrs, state.active if state else None)
