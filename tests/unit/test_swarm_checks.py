"""Doctor's swarm checks on the Engine API's own dicts (shaped as `docker node|service|task inspect` prints them on
Debian's dockerd 20.10): the multi-node situations one machine cannot stage — a down manager, a down worker whose
tasks were or were not rescheduled, a drained node, a lost or fragile quorum, a global proxy missing on a node, a
live color short of replicas while the idle one sits at 0."""

from __future__ import annotations

import pytest

from aixsss_ops.doctor import swarm_checks as sc
from aixsss_ops.runtime import swarm_nodes as sw

P = "aixsss"


# -- the shapes, as the engine returns them --
def node(nid: str, hostname: str, role: str = "worker", state: str = "ready", availability: str = "active",
         leader: bool = False, reachability: str = "reachable", addr: str | None = None) -> dict:
    addr = addr or f"172.31.0.{10 + int(nid[-1])}"
    d = {
        "ID": nid,
        "Version": {"Index": 9},
        "CreatedAt": "2026-12-06T15:31:21.045249037Z",
        "UpdatedAt": "2026-12-06T15:31:21.550848581Z",
        "Spec": {"Labels": {}, "Role": role, "Availability": availability},
        "Description": {
            "Hostname": hostname,
            "Platform": {"Architecture": "x86_64", "OS": "linux"},
            "Resources": {"NanoCPUs": 2000000000, "MemoryBytes": 25276194816},
            "Engine": {"EngineVersion": "20.10.24+dfsg1", "Plugins": [{"Type": "Network", "Name": "overlay"}]},
            "TLSInfo": {"TrustRoot": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"},
        },
        "Status": {"State": state, "Addr": addr},
    }
    if role == "manager":
        d["ManagerStatus"] = {"Leader": True, "Reachability": reachability, "Addr": f"{addr}:2377"}
        if not leader:
            del d["ManagerStatus"]["Leader"]
    return d


def service(sid: str, name: str, role: str, color: str | None = None, replicas: int | None = 1,
            constraints: list[str] | None = None, labels: dict | None = None, update: dict | None = None) -> dict:
    lab = {"io.aixsss.project": P, "io.aixsss.service": role, **({"io.aixsss.color": color} if color else {}),
           **(labels or {})}
    d = {
        "ID": sid,
        "Version": {"Index": 40},
        "CreatedAt": "2026-12-06T15:34:13.3Z",
        "UpdatedAt": "2026-12-06T15:34:13.3Z",
        "Spec": {
            "Name": name,
            "Labels": lab,
            "TaskTemplate": {
                "ContainerSpec": {"Image": "aixsss/app:1.0.0-951582898f28", "Args": ["sleep", "infinity"],
                                  "Init": False, "DNSConfig": {}, "Isolation": "default"},
                "Resources": {"Limits": {}, "Reservations": {}},
                "Placement": {"Constraints": constraints} if constraints else {},
                "ForceUpdate": 0,
                "Runtime": "container",
            },
            "Mode": {"Global": {}} if replicas is None else {"Replicated": {"Replicas": replicas}},
            "EndpointSpec": {"Mode": "dnsrr"},
        },
        "Endpoint": {"Spec": {}},
    }
    if update:
        d["UpdateStatus"] = update
    return d


_n = iter(range(10_000))


def task(sid: str, node_id: str | None, state: str = "running", desired: str = "running", slot: int | None = 1,
         err: str | None = None, ts: str = "2026-12-06T15:34:14.7Z") -> dict:
    status = {"Timestamp": ts, "State": state, "Message": {"running": "started", "pending": "pending task scheduling",
                                                             "failed": "started", "starting": "starting"}.get(state, state),
              "PortStatus": {}}
    if err:
        status["Err"] = err
    if state in ("running", "failed"):
        status["ContainerStatus"] = {"ContainerID": "f345c6c0c627", "PID": 0 if state == "failed" else 4242,
                                     "ExitCode": 1 if state == "failed" else 0}
    d = {"ID": f"t{next(_n):024d}", "Version": {"Index": 56}, "CreatedAt": ts, "UpdatedAt": ts, "Labels": {},
         "Spec": {"ContainerSpec": {"Image": "aixsss/app:1.0.0"}}, "ServiceID": sid, "Status": status,
         "DesiredState": desired}
    if slot is not None:
        d["Slot"] = slot
    if node_id:
        d["NodeID"] = node_id
    return d


M1, M2, M3, W1, W2 = "mgr000000000000000000000001", "mgr000000000000000000000002", "mgr000000000000000000000003", \
    "wrk000000000000000000000004", "wrk000000000000000000000005"


def cluster(**over) -> list[dict]:
    """Three managers (m1 leads) and two workers, all ready and active unless ``over`` says otherwise."""
    spec = {M1: ("m1", "manager"), M2: ("m2", "manager"), M3: ("m3", "manager"), W1: ("w1", "worker"),
            W2: ("w2", "worker")}
    out = []
    for nid, (host, role) in spec.items():
        kw = {"role": role, "leader": nid == M1, **over.get(host, {})}
        out.append(node(nid, host, **kw))
    return out


# -- quorum arithmetic --
@pytest.mark.parametrize(("n", "needed", "tolerates"), [(1, 1, 0), (2, 2, 0), (3, 2, 1), (4, 3, 1), (5, 3, 2),
                                                        (6, 4, 2), (7, 4, 3)])
def test_quorum_size_is_a_majority(n, needed, tolerates):
    assert sw.quorum_size(n) == needed
    assert sw.fault_tolerance(n) == tolerates


def _managers(n: int, down: int = 0) -> list[dict]:
    return [node(f"mgr{i:024d}", f"m{i}", role="manager", leader=i == 0,
                 state="down" if i >= n - down else "ready",
                 reachability="unreachable" if i >= n - down else "reachable") for i in range(n)]


@pytest.mark.parametrize(("n", "down", "status"), [
    (1, 0, "ok"), (3, 0, "ok"), (3, 1, "warn"), (3, 2, "fail"), (5, 1, "ok"), (5, 2, "warn"), (5, 3, "fail"),
    (2, 0, "warn"), (2, 1, "fail"), (4, 0, "warn"), (4, 1, "warn"), (4, 2, "fail"), (7, 3, "warn"), (7, 4, "fail"),
])
def test_quorum_findings(n, down, status):
    [f] = sc.quorum_findings(_managers(n, down))
    assert f.check == "swarm.quorum"
    assert f.status == status, f.message
    assert f"{n - down} of {n} manager(s) reachable, quorum {n // 2 + 1}" in f.message
    if down:
        assert f"m{n - 1}" in f.message  # the unreachable are named
    if n % 2 == 0:
        assert "even number of managers" in f.message
    if status != "ok":
        assert f.fix


def test_quorum_lost_says_what_stops_and_how_to_recover():
    [f] = sc.quorum_findings(_managers(3, 2))
    assert "quorum lost" in f.message and "nothing can be deployed" in f.message
    assert "--force-new-cluster" in f.fix


def test_a_single_manager_is_ok_but_says_it_tolerates_no_loss():
    [f] = sc.quorum_findings(_managers(1))
    assert f.status == "ok" and "single manager" in f.message and "leader m0" in f.message


def test_workers_do_not_count_towards_the_quorum():
    [f] = sc.quorum_findings(cluster(w1={"state": "down"}, w2={"state": "down"}))
    assert f.status == "ok" and "3 of 3 manager(s)" in f.message and "tolerates 1" in f.message


def test_a_ready_manager_the_raft_cannot_reach_counts_as_lost():
    [f] = sc.quorum_findings(cluster(m2={"reachability": "unreachable"}))
    assert f.status == "warn" and "2 of 3" in f.message and "m2" in f.message


def test_no_manager_at_all_is_a_lost_quorum():
    [f] = sc.quorum_findings([node(W1, "w1")])
    assert f.status == "fail"


# -- nodes --
def test_all_nodes_ready_and_active():
    [f] = sc.node_findings(cluster())
    assert f.status == "ok"
    assert "5 node(s) ready and active (3 manager(s), 2 worker(s))" in f.message
    assert f.message.endswith("m1, m2, m3, w1, w2")  # managers first, leader at their head


def test_drained_and_paused_nodes_warn_by_hostname_and_role():
    found = sc.node_findings(cluster(w1={"availability": "drain"}, m3={"availability": "pause"}))
    assert [f.status for f in found] == ["warn", "warn"]
    by = {f.message.split(" (")[0]: f for f in found}
    assert "drained" in by["worker w1"].message and "--availability active w1" in by["worker w1"].fix
    assert "paused" in by["manager m3"].message


def test_a_down_manager_fails():
    [f] = sc.node_findings(cluster(m2={"state": "down", "reachability": "unreachable"}))
    assert f.status == "fail"
    assert f.message.startswith("manager m2 (172.31.0.12) is down") and "quorum" in f.message
    assert "docker node demote m2" in f.fix


def test_a_down_worker_warns_and_says_its_tasks_were_rescheduled():
    api = service("svcapi", f"{P}-api-blue", "api", "blue", replicas=2)
    tasks = [
        # the task of the dead node: replaced (desired shutdown) though its last report still says running
        task("svcapi", W1, state="running", desired="shutdown", slot=1),
        task("svcapi", W2, slot=1),
        task("svcapi", W2, slot=2),
    ]
    [f] = sc.node_findings(cluster(w1={"state": "down"}), [api], tasks)
    assert f.status == "warn"
    assert f.message.startswith("worker w1 (172.31.0.14) is down")
    assert "rescheduled" in f.message and "not rescheduled" not in f.message


def test_a_down_worker_whose_tasks_are_still_assigned_names_them():
    api = service("svcapi", f"{P}-api-blue", "api", "blue", replicas=2)
    worker = service("svcwrk", f"{P}-worker-blue", "worker", "blue", replicas=1)
    tasks = [task("svcapi", W1, slot=1), task("svcapi", W2, slot=2), task("svcwrk", W1, slot=1)]
    [f] = sc.node_findings(cluster(w1={"state": "down"}), [api, worker], tasks)
    assert f.status == "warn"
    assert "2 task(s) of the project still assigned to it, not rescheduled yet" in f.message
    assert f"{P}-api-blue" in f.message and f"{P}-worker-blue" in f.message


def test_a_down_and_drained_node_reports_both():
    [f] = sc.node_findings(cluster(w2={"state": "down", "availability": "drain"}))
    assert f.status == "warn" and "is down, availability drain" in f.message


def test_a_manager_reporting_0000_is_shown_by_its_raft_address():
    n = node(M1, "m1", role="manager", leader=True, addr="0.0.0.0")
    n["ManagerStatus"]["Addr"] = "10.0.0.5:2377"
    assert sw.node(n).address == "10.0.0.5"


# -- services against their count --
def test_count_replicated_ignores_stale_and_down_node_tasks():
    svc = service("s1", f"{P}-api-blue", "api", "blue", replicas=3)
    tasks = [
        task("s1", M1, slot=1),
        task("s1", W1, slot=2),  # running per its last report, but w1 is down
        task("s1", W2, state="running", desired="shutdown", slot=3),  # being replaced
        task("s1", W2, state="starting", slot=3),
        task("other", W2, slot=1),  # another service's
    ]
    c = sw.count_service(svc, tasks, sw.nodes_of(cluster(w1={"state": "down"})))
    assert (c.mode, c.desired, c.running, c.short) == ("replicated", 3, 1, True)
    assert c.nodes == ("m1",) and c.role == "api" and c.color == "blue"
    assert c.counts == "1/3"


def test_count_global_is_per_node_that_is_up():
    proxy = service("px", f"{P}-proxy", "proxy", replicas=None)
    tasks = [task("px", nid, slot=None) for nid in (M1, M2, M3, W1)]
    tasks.append(task("px", W2, state="running", slot=None))  # w2 is down: not wanted, not counted
    c = sw.count_service(proxy, tasks, sw.nodes_of(cluster(w2={"state": "down"})))
    assert (c.mode, c.desired, c.running, c.counts) == ("global", 4, 4, "4/4 (global)")


def test_problems_are_newest_first_grouped_and_bounded():
    host = {M1: "m1", W1: "w1"}
    tasks = [
        task("s", M1, state="failed", desired="shutdown", err="task: non-zero exit (1)", ts="2026-12-06T15:00:01Z"),
        task("s", M1, state="failed", desired="shutdown", err="task: non-zero exit (1)", ts="2026-12-06T15:00:09Z"),
        task("s", None, state="pending", err="no suitable node (scheduling constraints not satisfied on 5 nodes)",
             slot=2, ts="2026-12-06T15:00:02Z"),
        task("s", M1, state="starting", slot=1, ts="2026-12-06T15:00:10Z"),
        task("s", W1, state="shutdown", desired="shutdown", ts="2026-12-06T15:00:11Z"),  # a scale-down: no problem
        task("s", W1, state="rejected", desired="shutdown", err="No such image: aixsss/app:2", slot=3,
             ts="2026-12-06T15:00:05Z"),
    ]
    got = sw.problems(tasks, [], host, "replicated")
    assert [str(p) for p in got] == [
        "task .2 pending on no node: no suitable node (scheduling constraints not satisfied on 5 nodes)",
        "2 tasks (newest .1) failed on m1: task: non-zero exit (1)",
        "task .3 rejected on w1: No such image: aixsss/app:2",
    ]


def _blue_green(blue_api=(2, 2), green_api=(0, 0), live_label: str | None = None, proxy_nodes=(M1, M2, M3, W1, W2),
                infra_running=True):
    """api and worker of both colors, postgres/redis/s3 pinned to m1, a global proxy; ``(desired, running)``."""
    services = [
        service("pg", f"{P}-postgres", "postgres", constraints=["node.hostname==m1"]),
        service("rd", f"{P}-redis", "redis", constraints=["node.hostname==m1"]),
        service("s3", f"{P}-s3", "s3", constraints=["node.hostname==m1"]),
        service("px", f"{P}-proxy", "proxy", replicas=None, labels={"io.aixsss.live": live_label} if live_label else {}),
        service("ab", f"{P}-api-blue", "api", "blue", replicas=blue_api[0]),
        service("wb", f"{P}-worker-blue", "worker", "blue", replicas=1, constraints=["node.labels.aixsss.worker==true"]),
        service("ag", f"{P}-api-green", "api", "green", replicas=green_api[0]),
        service("wg", f"{P}-worker-green", "worker", "green", replicas=0, constraints=["node.labels.aixsss.worker==true"]),
    ]
    tasks = [task(s, M1) for s in ("pg", "rd")]
    tasks.append(task("s3", M1) if infra_running else
                 task("s3", M1, state="failed", desired="shutdown", err="task: non-zero exit (2)"))
    tasks += [task("px", nid, slot=None) for nid in proxy_nodes]
    tasks += [task("ab", (W1, W2)[i % 2], slot=i + 1) for i in range(blue_api[1])]
    tasks.append(task("wb", W2))
    tasks += [task("ag", (W1, W2)[i % 2], slot=i + 1) for i in range(green_api[1])]
    return services, tasks


def test_every_service_at_its_count_and_the_idle_color_at_zero_is_ok():
    services, tasks = _blue_green()
    [f] = sc.replica_findings(services, tasks, cluster(), recorded_live="blue")
    assert f.status == "ok"
    assert f.message.startswith("live color blue; at their count:")
    for part in ("postgres 1/1", "proxy 5/5 (global)", "api-blue 2/2", "worker-blue 1/1", "green idle (0 replicas)"):
        assert part in f.message


def test_the_live_colors_api_short_fails_with_the_task_errors_and_nodes():
    services, tasks = _blue_green(blue_api=(3, 2))
    tasks.append(task("ab", W1, state="failed", desired="shutdown", slot=3,
                      err="task: non-zero exit (137): dockerexec: unhealthy container"))
    tasks.append(task("ab", W1, state="starting", slot=3, ts="2026-12-06T15:35:00Z"))
    found = sc.replica_findings(services, tasks, cluster(), recorded_live="blue")
    fail = [f for f in found if f.status == "fail"]
    assert len(fail) == 1
    f = fail[0]
    assert f.service == f"{P}-api-blue"
    assert f"the live color's api is short of its count: {P}-api-blue: 2/3 running on w1, w2" in f.message
    assert "task .3 failed on w1: task: non-zero exit (137): dockerexec: unhealthy container" in f.message
    assert "aixsss-ops stack logs api-blue" in f.fix
    assert any(f.status == "ok" for f in found)  # the rest is still listed as fine


def test_a_short_color_that_is_not_live_is_information_only():
    services, tasks = _blue_green(green_api=(2, 1))
    tasks.append(task("ag", None, state="pending", slot=2,
                      err="no suitable node (insufficient resources on 5 nodes)"))
    found = sc.replica_findings(services, tasks, cluster(), recorded_live="blue")
    assert all(f.status == "ok" for f in found), found
    info = next(f for f in found if f.message.startswith("green (not live)"))
    assert "insufficient resources" in info.message and "rollback to green" in info.fix


def test_the_proxys_live_label_wins_over_the_recorded_color():
    services, tasks = _blue_green(blue_api=(2, 0), green_api=(2, 2), live_label="green")
    found = sc.replica_findings(services, tasks, cluster(), recorded_live="blue")
    assert not [f for f in found if f.status == "fail"]
    assert any(f.message.startswith("blue (not live) is short") for f in found)
    assert "live color green; " in found[-1].message and "api-green 2/2" in found[-1].message
    services, tasks = _blue_green(blue_api=(2, 0), green_api=(2, 2), live_label="blue")
    assert any(f.status == "fail" and f.service == f"{P}-api-blue" for f in
               sc.replica_findings(services, tasks, cluster(), recorded_live="green"))


def test_without_a_live_color_every_color_with_replicas_is_judged():
    services, tasks = _blue_green(green_api=(1, 0))
    found = sc.replica_findings(services, tasks, cluster(), recorded_live=None)
    assert [f.service for f in found if f.status == "fail"] == [f"{P}-api-green"]
    assert "no live color known" in found[-1].message


def test_an_infra_service_short_fails_with_its_last_error():
    services, tasks = _blue_green(infra_running=False)
    [f] = [f for f in sc.replica_findings(services, tasks, cluster(), recorded_live="blue") if f.status == "fail"]
    assert f.message.startswith(f"s3 is short of its count: {P}-s3: 0/1 running; task .1 failed on m1: "
                                "task: non-zero exit (2)")
    assert "aixsss-ops stack logs s3" in f.fix


def test_a_global_proxy_missing_on_one_node_fails():
    services, tasks = _blue_green(proxy_nodes=(M1, M2, M3, W1))
    tasks.append(task("px", W2, state="failed", desired="running", slot=None,
                      err="host-mode port already in use on 1 node"))
    [f] = [f for f in sc.replica_findings(services, tasks, cluster(), recorded_live="blue") if f.status == "fail"]
    assert f.service == f"{P}-proxy"
    assert "4/5 (global) running" in f.message and "task w2 failed on w2: host-mode port already in use" in f.message


def test_a_global_service_no_node_allows_fails_for_infra():
    services, tasks = _blue_green(proxy_nodes=())
    services[3]["Spec"]["TaskTemplate"]["Placement"] = {"Constraints": ["node.labels.aixsss.proxy==true"]}
    [f] = [f for f in sc.replica_findings(services, tasks, cluster(), recorded_live="blue") if f.status == "fail"]
    assert "runs on no node" in f.message and "node.labels.aixsss.proxy==true" in f.message


def test_the_live_api_scaled_to_zero_fails():
    services, tasks = _blue_green(blue_api=(0, 0))
    [f] = [f for f in sc.replica_findings(services, tasks, cluster(), recorded_live="blue") if f.status != "ok"]
    assert f.status == "fail" and "scaled to 0 replicas while its color is live" in f.message


def test_a_paused_update_warns():
    services, tasks = _blue_green()
    services[4]["UpdateStatus"] = {"State": "paused", "StartedAt": "2026-12-06T15:40:00Z",
                                   "Message": "update paused due to failure or early termination of task x"}
    found = sc.replica_findings(services, tasks, cluster(), recorded_live="blue")
    [w] = [f for f in found if f.status == "warn"]
    assert "the last update of aixsss-api-blue is paused: update paused due to failure" in w.message
    assert "docker service rollback aixsss-api-blue" in w.fix


def test_no_service_of_the_project_warns():
    [f] = sc.replica_findings([], [], cluster())
    assert f.status == "warn" and "stack up" in f.fix


def test_a_down_worker_before_rescheduling_makes_the_live_color_short():
    services, tasks = _blue_green()
    [f] = [f for f in sc.replica_findings(services, tasks, cluster(w1={"state": "down"}), recorded_live="blue")
           if f.status == "fail"]
    assert f.service == f"{P}-api-blue" and "1/2 running on w2" in f.message


# -- the engine --
SWARM = {"NodeID": M1, "NodeAddr": "127.0.0.1", "LocalNodeState": "active", "ControlAvailable": True, "Error": "",
         "RemoteManagers": [{"NodeID": M1, "Addr": "127.0.0.1:2377"}], "Nodes": 1, "Managers": 1,
         "Cluster": {"ID": "za3r9my0ih3kxucz88qhtqb6u", "Version": {"Index": 10}}}


def _info(**swarm) -> dict:
    return {"Name": "vm", "ServerVersion": "20.10.24+dfsg1", "Swarm": {**SWARM, **swarm}}


def test_engine_is_a_manager():
    [f] = sc.engine_findings(_info(), "unix:///var/run/docker.sock")
    assert f.status == "ok"
    assert f.message == ("the engine at unix:///var/run/docker.sock (vm) is a swarm manager: 1 node(s), 1 manager(s), "
                         "cluster za3r9my0ih3k")


@pytest.mark.parametrize(("swarm", "words", "fix"), [
    ({"LocalNodeState": "inactive", "ControlAvailable": False, "NodeID": "", "Cluster": None}, "not part of a swarm",
     "docker swarm init"),
    ({"ControlAvailable": False, "RemoteManagers": [{"NodeID": M2, "Addr": "172.31.0.12:2377"}]},
     "is a swarm worker", "docker.host"),
    ({"LocalNodeState": "locked"}, "locked", "docker swarm unlock"),
    ({"LocalNodeState": "error", "Error": "manager stopped: can't initialize raft node"}, "can't initialize raft",
     "docker swarm init"),
])
def test_engine_not_a_manager_fails_with_the_fix(swarm, words, fix):
    [f] = sc.engine_findings(_info(**swarm), "tcp://10.0.0.2:2375")
    assert f.status == "fail" and words in f.message and fix in f.fix
    if "RemoteManagers" in swarm:
        assert "172.31.0.12:2377" in f.message


def test_the_swarm_checks_are_registered_and_selected_by_group():
    from aixsss_ops.doctor.registry import select

    names = [c.name for c in select(only=["swarm"])]
    assert names == ["swarm.engine", "swarm.nodes", "swarm.quorum", "swarm.replicas"]
    assert {c.needs for c in select(only=["swarm"])[1:]} == {"swarm.engine"}


def test_the_registry_runs_without_its_upload_purger():
    """docker-registry 2.8's upload purger panics walking an S3 bucket with an empty folder (it took a replica down
    at start in CI): the embedded registry's config turns it off."""
    import yaml

    from aixsss_ops.config import load_config
    from aixsss_ops.runtime import swarm_registry as sr

    cfg = load_config(None)
    conf = yaml.safe_load(sr.registry_config(cfg, "access", "secret"))
    assert conf["storage"]["maintenance"]["uploadpurging"] == {"enabled": False}
    assert conf["storage"]["s3"]["bucket"] == sr.bucket_name(cfg)
