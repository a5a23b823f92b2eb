"""The swarm engine behind the runtime protocol: every process of the app is a Swarm service per color, run by the
cluster whose manager is the engine ``[docker] host`` names (the Engine API, through the ``docker`` SDK).

- A process of a color is the service ``<project>-<role>-<color>``: ``define_app`` creates it at 0 replicas,
  ``start`` scales it to its replicas (``swarm.replicas``, else its count), ``stop`` to 0 (Swarm sends the stop
  signal and kills after the grace period). Its state is read from its tasks: RUNNING once every replica runs
  and passed its health check (Swarm keeps a task "starting" until then), BACKOFF when one failed since the
  service last changed.
- Secret files (env files, passwords) are Swarm secrets, named by a keyed digest of their content (secrets are
  immutable), mounted 0400 for the service's user: nothing secret is in a service's spec.
- The proxy runs on every node its constraints allow, its port published on that node. It reaches the api of a
  color by name over the overlay network. Each proxy node keeps the colors in its own ``run`` volume; preparing
  a color and switching to it are Swarm jobs on every proxy node (a global job that mounts that volume), so
  every node switches by one atomic rename of its ``live`` link and the switch is done once every node's job
  completed. The color last switched to is a label of the proxy service (``routed_color``).
- ``exec`` and the container-level calls run in the replica on the manager's own node (where the infra runs
  unless ``swarm.infra_node`` says otherwise; an infra service pinned to another node is refused naming that node,
  so point-in-time recovery, pgBackRest exec'd in the Postgres replica, runs against the infra node's engine).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from datetime import UTC, datetime
from pathlib import Path

from aixsss_ops import appspec
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.proxy import nginx
from aixsss_ops.runtime import docker_specs as specs
from aixsss_ops.runtime import swarm_specs as sw
from aixsss_ops.runtime.base import COLORS, INFRA, UnitStatus, is_app, unit_name
from aixsss_ops.runtime.docker import DockerRuntime
from aixsss_ops.runtime.docker_engine import L_COLOR, L_PROJECT, L_SERVICE, L_SPEC
from aixsss_ops.runtime.swarm_nodes import L_LIVE

TERMINAL = ("complete", "shutdown", "failed", "rejected", "orphaned", "remove")
FAILED = ("failed", "rejected")
RETRIED_FAILURES = 3  # failed tasks since a service changed that make it BACKOFF when Swarm restarts its tasks: one
# failure can be the node's moment (a port or volume a stopping task still held), and Swarm starts another task
JOB_POLL_S = 0.02


def _ts(s: str | None) -> float | None:
    if not s or s.startswith("0001-"):
        return None
    head, _, frac = s.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp() + float(f"0.{frac[:6] or 0}")


class SwarmRuntime(DockerRuntime):
    def __init__(self, cfg, layout):
        super().__init__(cfg, layout)
        self._self_node: dict | None = None
        self._user_cache: dict[tuple[str, str], tuple[int, int]] = {}

    # -- the cluster --
    def self_node(self) -> dict:
        """The node of the engine aixsss-ops talks to; an error when that engine is no swarm manager."""
        if self._self_node is None:
            info = self.client.info().get("Swarm") or {}
            if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
                raise UsageError(
                    "the Docker engine is not a swarm manager (runtime = \"swarm\")",
                    hint="run 'docker swarm init' on it, or point [docker] host at a manager of the swarm")
            self._self_node = self.client.api.inspect_node(info["NodeID"])
        return self._self_node

    def infra_node(self) -> str:
        return self.cfg.swarm.infra_node or self.self_node()["Description"]["Hostname"]

    def node_names(self) -> dict[str, str]:
        return {n["ID"]: n["Description"]["Hostname"] for n in self.client.api.nodes()}

    def nodes_up(self) -> tuple[dict[str, str], set[str]]:
        """Hostnames by node id, and the ids of the nodes that are ready (a task on any other one is not running,
        whatever its last report said)."""
        nodes = self.client.api.nodes()
        return ({n["ID"]: n["Description"]["Hostname"] for n in nodes},
                {n["ID"] for n in nodes if n.get("Status", {}).get("State") == "ready"})

    def ensure_network(self) -> str | None:
        """The project's overlay network (attachable: jobs and one-off containers join it); what was done."""
        from aixsss_ops.runtime.swarm_registry import ensure_network

        done: list[str] = []
        ensure_network(self.client, self.cfg, done.append)
        return "; ".join(done) or None

    # -- services and their tasks --
    def service_attrs(self, service: str, color: str | None = None) -> dict | None:
        import docker

        try:
            return self.client.api.inspect_service(sw.service_name(self.cfg, unit_name(service, color)))
        except docker.errors.NotFound:
            return None

    def services(self) -> list[dict]:
        return self.client.api.services(filters={"label": f"{L_PROJECT}={self.cfg.project}"})

    def tasks(self, name: str) -> list[dict]:
        return self.client.api.tasks(filters={"service": name})

    @staticmethod
    def desired(attrs: dict) -> int | None:
        """Replicas asked for; None for a global service."""
        mode = attrs["Spec"].get("Mode", {})
        return mode["Replicated"].get("Replicas", 0) if "Replicated" in mode else None

    def _judge(self, attrs: dict, tasks: list[dict]) -> tuple[str, str, list[dict]]:
        """(state, description, running tasks) of a service from its tasks."""
        want = self.desired(attrs)
        names, up = self.nodes_up() if tasks else ({}, set())
        live = [t for t in tasks if t.get("DesiredState") == "running" and t.get("NodeID") in up | {None, ""}]
        running = [t for t in live if t["Status"]["State"] == "running"]
        if want is None:  # global: one task per eligible node (stopping it removes the service)
            want = len(live)
            if want == 0:
                busy = [t for t in tasks if t["Status"]["State"] not in TERMINAL]
                return ("STARTING", "tasks being replaced", []) if busy else ("STOPPED", "no eligible node", [])
        if want == 0:
            busy = [t for t in tasks if t["Status"]["State"] not in TERMINAL]
            return ("STOPPING" if busy else "STOPPED"), f"0 replicas{f', {len(busy)} stopping' if busy else ''}", []
        changed = _ts(attrs.get("UpdatedAt")) or 0
        failed = [t for t in tasks if t["Status"]["State"] in FAILED and (_ts(t.get("CreatedAt")) or 0) >= changed]
        where = ", ".join(sorted(names.get(t.get("NodeID"), "?") for t in running))
        desc = f"{len(running)}/{want} running" + (f" on {where}" if where else "")
        if len(running) >= want:
            return "RUNNING", desc, running
        if failed:
            last = max(failed, key=lambda t: t.get("CreatedAt", ""))
            err = last["Status"].get("Err") or last["Status"].get("Message") or last["Status"]["State"]
            code = (last["Status"].get("ContainerStatus") or {}).get("ExitCode")
            said = f"{desc}; {len(failed)} task(s) {last['Status']['State']}, the last: {err}" + \
                (f" (exit {code})" if code else "")
            policy = attrs["Spec"].get("TaskTemplate", {}).get("RestartPolicy") or {}
            final = 1 if policy.get("Condition") == "none" else RETRIED_FAILURES
            if len(failed) >= final:
                return "BACKOFF", said, running
            return "STARTING", f"{said}; Swarm starts another", running
        return "STARTING", desc, running

    def state(self, service: str, color: str | None = None) -> str:
        attrs = self.service_attrs(service, color)
        if attrs is None:
            return "ABSENT"
        return self._judge(attrs, self.tasks(attrs["Spec"]["Name"]))[0]

    def status(self) -> list[UnitStatus]:
        out = []
        now = time.time()
        all_tasks: dict[str, list[dict]] = {}
        for t in self.client.api.tasks(filters={"label": f"{L_PROJECT}={self.cfg.project}"}):
            all_tasks.setdefault(t["ServiceID"], []).append(t)
        for attrs in self.services():
            labels = attrs["Spec"].get("Labels") or {}
            service, color = labels.get(L_SERVICE, "?"), labels.get(L_COLOR) or None
            if service == "registry":
                continue
            state, desc, running = self._judge(attrs, all_tasks.get(attrs["ID"], []))
            starts = [_ts(t["Status"].get("Timestamp")) for t in running]
            oldest = min((s for s in starts if s), default=None)
            out.append(UnitStatus(unit=unit_name(service, color) if is_app(service) and color else service,
                                  service=service, color=color, state=state, pid=None,
                                  uptime_s=int(now - oldest) if state == "RUNNING" and oldest else None,
                                  description=desc, replicas=desc.partition(";")[0]))
        return sorted(out, key=lambda u: u.unit)

    # -- secrets --
    def _secret_name(self, target: str, data: bytes) -> str:
        mac = hmac.new(self._label_key(), target.encode() + b"\0" + data, hashlib.sha256).hexdigest()[:16]
        return f"{self.cfg.project}-{target.replace('/', '_')}-{mac}"

    def ensure_secrets(self, files: dict[str, bytes]) -> dict[str, tuple[str, str]]:
        """target -> (secret id, secret name), each created when missing."""
        import docker

        have = {s.name: s.id for s in self.client.secrets.list(filters={"label": f"{L_PROJECT}={self.cfg.project}"})}
        out = {}
        for target, data in sorted(files.items()):
            name = self._secret_name(target, data)
            sid = have.get(name)
            if sid is None:
                try:
                    sid = self.client.secrets.create(name=name, data=data, labels={L_PROJECT: self.cfg.project}).id
                except docker.errors.APIError as e:
                    if e.status_code != 409:
                        raise OpsError(f"creating the swarm secret {name} failed: {e.explanation or e}") from None
                    sid = next(s.id for s in self.client.secrets.list(filters={"name": name}) if s.name == name)
            out[target] = (sid, name)
        return out

    def prune_secrets(self) -> None:
        """Remove the project's secrets no service mentions any more (an older env file's)."""
        import docker

        used = {ref.get("SecretName") for a in self.services()
                for ref in a["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or []}
        for s in self.client.secrets.list(filters={"label": f"{L_PROJECT}={self.cfg.project}"}):
            if s.name not in used:
                with contextlib.suppress(docker.errors.APIError):  # in use by a service created meanwhile
                    s.remove()

    def _image_user(self, image: str, user: str) -> tuple[int, int]:
        """uid and gid of ``user`` in ``image`` (read from a created, never started, container of it)."""
        key = (image, user)
        if key not in self._user_cache:
            name, _, group = user.partition(":")
            if not name or (name.isdigit() and (not group or group.isdigit())):
                self._user_cache[key] = (int(name or 0), int(group or name or 0))
            else:
                c = self.client.containers.create(image, ["true"], entrypoint=[])
                try:
                    self._user_cache[key] = self._user_ids(c, user)
                finally:
                    c.remove(force=True)
        return self._user_cache[key]

    # -- creating services --
    def image_ref(self, image: str) -> str:
        """The name the nodes pull ``image`` by."""
        if self.cfg.swarm.registry == "none":
            return image
        from aixsss_ops.runtime import swarm_registry

        return swarm_registry.image_ref(self.cfg, image)

    def publish(self, image: str, say=None) -> str:
        """Make ``image`` pullable by every node (pushed to the registry); the reference services use."""
        if self.cfg.swarm.registry == "none":
            return image
        from aixsss_ops.runtime import swarm_registry

        return swarm_registry.push(self.client, self.cfg, image, say or (lambda _m: None))

    def ensure_service(self, spec: specs.ContainerSpec, count: int) -> str | None:
        """The service of ``spec`` at ``count`` replicas, (re)created when missing or different; what was done.
        An unchanged service keeps its replicas."""
        import docker

        files = self.secret_files(spec)
        image = self.image_ref(spec.image) if spec.color else spec.image  # infra and proxy: on their nodes
        digest = hashlib.sha256(f"{self.spec_digest(spec, files)}|{image}".encode()).hexdigest()[:16]
        attrs = self.service_attrs(spec.service, spec.color)
        if attrs is not None and (attrs["Spec"].get("Labels") or {}).get(L_SPEC) == digest:
            return None
        if attrs is not None:
            self._remove_service(attrs["ID"])
        refs = self.ensure_secrets(files)
        uid, gid = self._image_user(spec.image, spec.user or "") if files else (0, 0)
        secrets = [(sid, name, target) for target, (sid, name) in refs.items()]
        kw = sw.service_kwargs(self.cfg, spec, image=image, digest=digest, infra_node=self.infra_node(),
                               secrets=[], count=count)
        from docker import types

        kw["secrets"] = [types.SecretReference(sid, name, filename=target, uid=str(uid), gid=str(gid), mode=0o400)
                         for sid, name, target in secrets]
        try:
            self.client.services.create(**kw)
        except docker.errors.APIError as e:
            raise OpsError(f"creating the service {kw['name']} failed: {e.explanation or e}") from None
        return "recreated" if attrs is not None else "created"

    def _remove_service(self, service_id: str) -> None:
        import docker

        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_service(service_id)

    def _update(self, service: str, color: str | None, what: str, change) -> None:
        """Apply ``change`` to the service's stored spec and send that spec back as it is: the SDK's update
        rebuilds the task template with its defaults filled in, which Swarm takes for a new template and so
        replaces every task. Retried when someone else changed the service meanwhile."""
        import docker

        api = self.client.api
        for attempt in range(5):
            attrs = self.service_attrs(service, color)
            if attrs is None:
                raise OpsError(f"the service {sw.service_name(self.cfg, unit_name(service, color))} does not exist",
                               hint="run 'aixsss-ops stack up' to create it")
            spec = attrs["Spec"]
            if not change(spec):
                return
            try:
                r = api._post_json(api._url("/services/{0}/update", attrs["ID"]), data=spec,
                                   params={"version": attrs["Version"]["Index"]})
                api._raise_for_status(r)
                return
            except docker.errors.APIError as e:  # "update out of sequence": someone changed it meanwhile
                if attempt == 4 or "out of sequence" not in str(e):
                    raise OpsError(f"{what} of {spec['Name']} failed: {e.explanation or e}") from None

    def scale(self, service: str, color: str | None, count: int) -> None:
        def change(spec: dict) -> bool:
            if "Replicated" not in spec.get("Mode", {}) or spec["Mode"]["Replicated"].get("Replicas", 0) == count:
                return False
            spec["Mode"] = {"Replicated": {"Replicas": count}}
            return True

        self._update(service, color, f"scaling to {count}", change)

    # -- the protocol --
    def app_specs(self, color: str, release: str, version: str) -> list[specs.ContainerSpec]:
        from aixsss_ops.runtime.docker_images import app_tag

        return sw.app_processes(self.cfg, color, release, version, app_tag(self.cfg, release))

    def define_app(self, color: str, source: Path, version: str) -> None:
        """The services of ``color``'s processes at 0 replicas; a service of the color the description no longer
        has is removed."""
        image = self.ensure_app_image(source, version)
        self.publish(image)
        wanted = self.app_specs(color, source.name, version)
        for spec in wanted:
            self.ensure_service(spec, 0)
        names = {s.service for s in wanted}
        for attrs in self.services():
            labels = attrs["Spec"].get("Labels") or {}
            if labels.get(L_COLOR) == color and labels.get(L_SERVICE) not in names:
                self._remove_service(attrs["ID"])
        self.prune_secrets()

    def start(self, service: str, color: str | None = None, detach: bool = False) -> None:
        """A service update to its replicas, once the tasks of an earlier stop have ended: a new task must not run
        beside an old one still stopping on the same volume (Postgres's, the store's), and a host-mode port would
        hold the new one back anyway, spending its readiness time."""
        if self.state(service, color) == "STOPPING":
            from aixsss_ops.poll import poll_until

            timeout = self._stop_wait(service)
            if not poll_until(lambda: self.state(service, color) != "STOPPING", timeout, interval=0.2):
                raise OpsError(f"{unit_name(service, color)} is still stopping after {timeout:.0f}s: not started",
                               hint="`aixsss-ops stack status` shows its tasks; start it again once they ended")
        self.scale(service, color, sw.replicas(self.cfg, service) if is_app(service) else 1)

    def _stop_wait(self, service: str) -> float:
        spec = appspec.spec_of(self.cfg, service) if is_app(service) else None
        return (spec.stop_timeout if spec else self.cfg.docker.stop_timeout) + 30

    def stop(self, service: str, color: str | None = None, wait: bool = True) -> None:
        attrs = self.service_attrs(service, color)
        if attrs is None:
            return
        if self.desired(attrs) is None:  # global (the proxy): removed, stack up creates it again
            self._remove_service(attrs["ID"])
        else:
            self.scale(service, color, 0)
        if wait:
            from aixsss_ops.poll import poll_until

            poll_until(lambda: self.state(service, color) in ("STOPPED", "ABSENT"), self._stop_wait(service),
                       interval=0.2)

    def find(self, service: str, color: str | None = None):
        """The running replica of the service on the manager's own node (for exec and container calls): the
        newest running container of this engine that Swarm labelled with the service's name. The engine's own
        containers are the ground truth of "on this node"; the task list can lag them after a service was
        removed and created again under the same name."""
        name = sw.service_name(self.cfg, unit_name(service, color))
        here = self.client.containers.list(filters={"label": f"com.docker.swarm.service.name={name}",
                                                    "status": "running"})
        return max(here, key=lambda c: c.attrs.get("Created", "")) if here else None

    def pinned_elsewhere(self, service: str) -> str | None:
        """The node an infra service (postgres, redis, s3: pinned to ``swarm.infra_node``) runs on when that is not
        the node of the engine aixsss-ops talks to; None when it is this one, or the service is not pinned."""
        if service not in INFRA or service == "proxy":
            return None
        node, here = self.infra_node(), self.self_node()["Description"]["Hostname"]
        return node if node != here else None

    def _need(self, service: str, color: str | None = None):
        """The replica of the service on this engine's node (exec, signals and container calls run in it). An
        infra service pinned to another node is a usage error naming that node: what needs its container (an exec
        in Postgres: pgBackRest for point-in-time recovery) must be run against that node's engine."""
        node = self.pinned_elsewhere(service)
        if node is not None:
            here = self.self_node()["Description"]["Hostname"]
            raise UsageError(f"{service} runs on the swarm node {node} (swarm.infra_node), not on {here}, the node of "
                             f"the engine aixsss-ops talks to: run this command on {node}, with [docker] host (or "
                             f"DOCKER_HOST) naming {node}'s engine, a manager of the swarm")
        c = self.find(service, color)
        if c is None:
            raise OpsError(f"no replica of {unit_name(service, color)} runs on this node "
                           f"({self.self_node()['Description']['Hostname']})",
                           hint="commands run in a service's container on the manager aixsss-ops talks to")
        return c

    def signal(self, service: str, sig: str, color: str | None = None) -> None:
        """``sig`` to every running replica on this node (Swarm has no signal for a service)."""
        self._need(service, color).kill(signal=sig if sig.startswith("SIG") else f"SIG{sig}")

    def _logs(self, service: str, color: str | None, **kw) -> str:
        import docker

        name = sw.service_name(self.cfg, unit_name(service, color))
        try:
            stream = self.client.api.service_logs(name, stdout=True, stderr=True, details=True, **kw)
            raw = b"".join(stream).decode("utf-8", "replace")
        except docker.errors.NotFound:
            return ""
        out = []
        for line in raw.splitlines():
            details, _, text = line.partition(" ")
            task = dict(kv.split("=", 1) for kv in details.split(",") if "=" in kv).get("com.docker.swarm.task.id")
            out.append(f"[{task[:6]}] {text}" if task else line)
        return "\n".join(out) + ("\n" if out else "")

    def logs(self, service: str, color: str | None = None, lines: int = 100) -> str:
        if is_app(service) and color is None:
            raise OpsError(f"{service} runs per color: name one (blue or green)")
        return self._logs(service, color, tail=lines)

    def logs_since_start(self, service: str, color: str | None = None) -> str:
        attrs = self.service_attrs(service, color)
        if attrs is None:
            return ""
        since = _ts(attrs.get("UpdatedAt"))
        return self._logs(service, color, **({"since": int(since)} if since else {}))

    def replica_logs(self, service: str, color: str | None = None) -> dict[str, str]:
        """What each running replica logged since the service last changed: task id -> text."""
        out: dict[str, list[str]] = {}
        for line in self.logs_since_start(service, color).splitlines():
            if line.startswith("[") and "] " in line:
                task, _, text = line[1:].partition("] ")
                out.setdefault(task, []).append(text)
        return {t: "\n".join(v) for t, v in out.items()}

    # -- routing: a global job on the proxy nodes changes each node's run volume --
    def _job(self, what: str, image: str, script: str, timeout: float) -> None:
        """Run ``script`` once on every proxy node, with that node's run volume mounted; return once every node's
        task completed, raise with the nodes that failed or did not finish."""
        import docker
        from docker import types

        name = f"{self.cfg.project}-{what}-{time.time_ns() % 10**12}"
        svc = self.client.services.create(
            image, ["sh", "-ec", script], name=name, user="0:0",
            labels={L_PROJECT: self.cfg.project, L_SERVICE: "job"}, container_labels={L_PROJECT: self.cfg.project},
            mounts=[sw.volume(self.cfg, "run", str(specs.RUN))],
            mode=types.ServiceMode("global-job"), constraints=list(self.cfg.swarm.proxy_constraints),
            restart_policy=types.RestartPolicy(condition="none"))
        try:
            deadline = time.monotonic() + timeout
            while True:
                tasks = self.tasks(svc.id)
                if tasks and all(t["Status"]["State"] in TERMINAL for t in tasks):
                    break
                if time.monotonic() > deadline:
                    names = self.node_names()
                    late = sorted(names.get(t.get("NodeID"), "?") for t in tasks
                                  if t["Status"]["State"] not in TERMINAL)
                    raise OpsError(f"{what} did not finish within {timeout:.0f}s on {', '.join(late) or 'any node'}")
                time.sleep(JOB_POLL_S)
            bad = [t for t in tasks if t["Status"]["State"] != "complete"]
            if bad:
                names = self.node_names()
                logs = b"".join(self.client.api.service_logs(svc.id, stdout=True, stderr=True)).decode(errors="replace")
                where = ", ".join(f"{names.get(t.get('NodeID'), '?')}: {t['Status'].get('Err') or t['Status']['State']}"
                                  for t in bad)
                raise OpsError(f"{what} failed on {where}", details=logs[-2000:])
        finally:
            with contextlib.suppress(docker.errors.APIError):
                svc.remove()

    def prepare_route(self, color: str, source: Path) -> None:
        """The web build of the release (from its app image) and the color's links in every proxy node's volume."""
        from aixsss_ops.runtime.docker_images import app_tag

        release, run = source.name, specs.RUN
        web = f"{specs.APP_ROOT}/{self.cfg.app.web_root}"
        script = f"""
mkdir -p {run}/web {run}/colors/{color}
if [ ! -d {run}/web/{release} ]; then
  rm -rf {run}/web/.{release}.tmp
  if [ -d {web} ]; then cp -a {web} {run}/web/.{release}.tmp; else mkdir {run}/web/.{release}.tmp; fi
  chmod -R a+rX {run}/web/.{release}.tmp
  mv -T {run}/web/.{release}.tmp {run}/web/{release}
fi
ln -sfn {nginx.color_socket(run, color)} {run}/colors/{color}/api.sock
ln -sfn {run}/web/{release} {run}/colors/{color}/web
"""
        self._job(f"prepare-{color}", self.image_ref(app_tag(self.cfg, release)), script,
                  self.cfg.swarm.switch_timeout + 60)

    def route(self, color: str) -> None:
        run = specs.RUN
        script = (f'[ -d {run}/colors/{color} ] || {{ echo "{color} was never prepared on this node" >&2; exit 3; }}; '
                  f"ln -sfn colors/{color} {run}/.live.tmp && mv -T {run}/.live.tmp {run}/live")
        self._job(f"switch-{color}", self.cfg.docker.base_image, script,
                  self.cfg.swarm.switch_timeout)
        self._label_proxy(color)

    def _label_proxy(self, color: str) -> None:
        """Record ``color`` on the proxy service (a service label: its tasks are not touched)."""
        def change(spec: dict) -> bool:
            if (spec.get("Labels") or {}).get(L_LIVE) == color:
                return False
            spec["Labels"] = {**(spec.get("Labels") or {}), L_LIVE: color}
            return True

        if self.service_attrs("proxy") is not None:
            self._update("proxy", None, "recording the live color", change)

    def routed_color(self) -> str | None:
        attrs = self.service_attrs("proxy")
        color = ((attrs or {}).get("Spec", {}).get("Labels") or {}).get(L_LIVE)
        return color if color in COLORS else None
