"""``stack up | down | status | logs`` on a Docker engine (``runtime = "docker"``).

One user-defined network per project, named volumes for Postgres, Redis, object data and the proxy's run
folder (and pgBackRest's repository with ``backup.pitr``), infra containers (postgres, redis, s3, proxy) and the
api/worker containers of each color, all from docker_specs (the same specs ``compose render`` writes). Every infra
port is published on ``host`` with the port of ops.toml, so migrations, backups, probes and the smoke test reach the
services exactly as on the local engine. ``up`` creates what is missing, recreates what differs from its spec,
starts what is stopped; everything else is the engine-independent ``Stack``.
"""

from __future__ import annotations

from aixsss_ops.context import envgen
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.context.deploystate import Colors
from aixsss_ops.context.embedded import ensure_secrets
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.probes import SEAWEED_READY_SCRIPT
from aixsss_ops.runtime import docker_specs as specs
from aixsss_ops.runtime.docker import DockerRuntime
from aixsss_ops.runtime.docker_engine import L_PROJECT, engine_host
from aixsss_ops.stack.manager import Progress, Stack, StackReport


class DockerStack(Stack):
    def __init__(self, dep: Deployment):
        super().__init__(dep)
        self.runtime = DockerRuntime(self.cfg, self.layout)

    def infra_defs(self) -> list[specs.ContainerSpec]:
        return specs.infra(self.cfg)

    def app_defs(self, color: str) -> list[specs.ContainerSpec]:
        spec = self.colors().spec(color)
        return self.runtime.app_specs(color, spec.release, spec.version) if spec else []

    # -- up --
    def _begin_up(self, say: Progress) -> tuple[Colors, list[specs.ContainerSpec]]:
        """What ``up`` does first on either engine of containers: the state folder, the stack's secrets, the env
        files, the colors (the live one as the proxy says), and the infra images checked; (colors, infra)."""
        from aixsss_ops.runtime.docker_images import require_image

        lay = self.layout
        lay.root.mkdir(parents=True, exist_ok=True)
        ensure_secrets(lay)
        self._check_external_reachable()
        self.check_external(say)  # a wrong URL or password is refused before the env files would keep it
        envgen.write_env_files(self.cfg, lay, self.dep.environ)
        colors = self.colors(say)
        colors.active = self.live_color() or colors.active
        self.deploy_state.save(colors)
        infra = self.infra_defs()
        for image in sorted({s.image for s in infra}):
            require_image(self.runtime.client, image, "infra")
        return colors, infra

    def up(self, progress: Progress | None = None, infra_only: bool = False) -> StackReport:
        say = progress or (lambda _m: None)
        actions: list[str] = []
        rt = self.runtime
        _ = rt.client  # a clear error now when the engine is unreachable
        colors, infra = self._begin_up(say)
        actions += self._ensure_network_and_volumes()
        live = colors.spec(colors.active)
        say(f"app image of {live.release}")
        rt.ensure_app_image(live.path, live.version, say)
        app = self.app_defs(colors.active)
        self._check_ports([*infra, *app])

        by_service = {s.service: s for s in infra}
        backing = [by_service[n] for n in ("postgres", "redis", "s3") if n in by_service]  # not the external ones
        for spec in backing:
            actions += self._ensure_running(spec, say)
        self.wait_ready(backing, say)
        if infra_only:
            return self.status(actions)
        actions += self._prepare_data(live, say)
        actions += self._archiving()

        for spec in app:
            actions += self._ensure_running(spec, say)
        self.wait_ready(app, say)
        actions += self._ensure_running(by_service["proxy"], say)
        for color, cspec in colors.colors.items():
            if color == colors.active or rt.find("api", color) is not None:
                rt.prepare_route(color, cspec.path)
        if self.live_color() is None:
            rt.route(colors.active)
            actions.append(f"routed the proxy to {colors.active}")
        self.wait_ready([by_service["proxy"]], say)
        return self.status(actions)

    def _check_external_reachable(self) -> None:
        """An external service named by a loopback address is this machine's, which no container reaches."""
        from urllib.parse import urlsplit

        from aixsss_ops.config import is_loopback

        for service in self.cfg.external:
            try:
                host = urlsplit(self.external_url(service)).hostname or ""
            except UsageError:  # named nowhere: check_external says so, naming the setting
                continue
            if host and is_loopback(host):
                raise UsageError(f"{service}.external: the address {host} is the loopback of this machine, which "
                                 "the app's containers cannot reach",
                                 hint="name the managed service by an address the containers reach (a DNS name "
                                      "or an IP of its network)")

    def _ensure_network_and_volumes(self) -> list[str]:
        import docker

        client, out = self.runtime.client, []
        labels = {L_PROJECT: self.cfg.project}
        net = specs.network_name(self.cfg)
        try:
            client.networks.get(net)
        except docker.errors.NotFound:
            client.networks.create(net, driver="bridge", labels=labels)
            out.append(f"created network {net}")
        used = {k for s in self.infra_defs() for k in s.volumes} | {"run"}  # none for an external service
        keys = [k for k in specs.VOLUMES if k in used] + sorted(used - set(specs.VOLUMES))
        for key in keys:  # the pgbackrest volume too with backup.pitr (the postgres spec mounts it)
            name = specs.volume_name(self.cfg, key)
            try:
                client.volumes.get(name)
            except docker.errors.NotFound:
                client.volumes.create(name, labels=labels)
                out.append(f"created volume {name}")
        return out

    def _archiving(self) -> list[str]:
        """With ``backup.pitr``: the pgBackRest stanza (pgBackRest in the Postgres container, its repository the
        ``<project>-pgbackrest`` volume), so the cluster's WAL archiving succeeds from the start."""
        from aixsss_ops.backup import pitr

        eng = pitr.engine_for(self.cfg, self.layout, runtime=self.runtime)
        if eng is None or eng.info().exists:
            return []
        eng.stanza_create()
        return [f"created the pgBackRest stanza {eng.stanza}"]

    def _ensure_running(self, spec: specs.ContainerSpec, say: Progress) -> list[str]:
        out = []
        c, action = self.runtime.ensure(spec)
        if action:
            out.append(f"{action} {spec.unit}")
        c.reload()
        if c.status != "running":
            say(f"starting {spec.unit}")
            self.runtime.start(spec.service, spec.color)
            out.append(f"started {spec.unit}")
        return out

    def _absent_detail(self, state: str) -> str:
        return "no container (removed?): run 'stack up'" if state == "ABSENT" else ""

    def _ports_on_this_host(self) -> bool:
        return engine_host(self.cfg).startswith("unix://")

    def _probe_s3_volumes(self) -> tuple[bool, str]:
        try:
            r = self.runtime.exec("s3", ["python3", "-c", SEAWEED_READY_SCRIPT, "/data", "http://127.0.0.1:9333"],
                                  timeout=10)
        except OpsError as e:  # no container to ask yet (a swarm task still being placed): not ready, not an error
            return False, e.message
        out = (r.stdout or b"").decode(errors="replace").strip() or (r.stderr or b"").decode(errors="replace")[-200:]
        return r.returncode == 0, out

    def _logs_detail(self, spec: specs.ContainerSpec) -> str:
        name = specs.container_name(self.cfg, spec.unit)
        return f"last lines of {name}:\n{self.runtime.logs(spec.service, spec.color, 25)}"

    # -- for doctor --
    def engine_problem(self) -> str | None:
        try:
            _ = self.runtime.client  # connects once
        except OpsError as e:
            return e.message
        return None

    def proxy_config_check(self) -> tuple[bool, str, str | None]:
        """``nginx -t`` of the config the proxy container runs with, inside it."""
        name = specs.container_name(self.cfg, "proxy")
        state = self.runtime.state("proxy")
        if state != "RUNNING":
            return False, f"the proxy container {name} is {state}", "`aixsss-ops stack up`"
        conf = specs.PROXY_CONF
        r = self.runtime.exec("proxy", ["nginx", "-t", "-q", "-c", conf, "-p", f"{specs.RUN}/"], timeout=10)
        if r.returncode != 0:
            last = (r.stderr or r.stdout or b"").decode(errors="replace").strip().splitlines()[-1:]
            return False, f"nginx -t in {name} rejects {conf}: {last[0] if last else f'exit {r.returncode}'}", \
                "rerun `aixsss-ops stack up` (it recreates the proxy from its spec)"
        return True, f"nginx -t in {name} accepts {conf}", None
