"""``stack up | down | status | logs`` on a Docker engine (``runtime = "docker"``).

One user-defined network per project, named volumes for Postgres, Redis, object data and the proxy's run
folder, infra containers (postgres, redis, s3, proxy) and the api/worker containers of each color, all from
docker_specs (the same specs ``compose render`` writes). Every infra port is published on ``host`` with the
port of ops.toml, so migrations, backups, probes and the smoke test reach the services exactly as on the local
engine. ``up`` creates what is missing, recreates what differs from its spec, starts what is stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from aixsss_ops.config import OpsConfig
from aixsss_ops.deploy.state import DeployState
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.runtime.base import FAILED_STATES, STOPPED_STATES, unit_name
from aixsss_ops.runtime.docker import DockerRuntime
from aixsss_ops.runtime.docker_engine import L_PROJECT, engine_host
from aixsss_ops.s3 import ensure_bucket
from aixsss_ops.stack import docker_specs as specs
from aixsss_ops.stack import envgen, probes
from aixsss_ops.stack.layout import Layout
from aixsss_ops.stack.manager import Progress, ServiceReport, Stack, StackReport
from aixsss_ops.stack.postgres import ensure_role_and_database


class DockerStack(Stack):
    def __init__(self, cfg: OpsConfig):
        self.cfg = cfg
        self.layout = Layout(cfg.state)
        self.runtime = DockerRuntime(cfg, self.layout)
        self.deploy_state = DeployState(self.layout.deploy_dir)

    # -- what runs --
    def _release(self, color: str) -> tuple[str, str, Path] | None:
        spec = self.colors()["colors"].get(color)
        if not spec:
            return None
        return spec["release"], spec["version"], Path(spec["source"])

    def app_specs(self, color: str) -> list[specs.ContainerSpec]:
        rel = self._release(color)
        return self.runtime.app_specs(color, rel[0], rel[1]) if rel else []

    def unit_state(self, unit: str) -> str:
        service, _, color = unit.partition("-")
        return self.runtime.state(service, color or None)

    # -- up --
    def up(self, progress: Progress | None = None) -> StackReport:
        say = progress or (lambda _m: None)
        actions: list[str] = []
        rt, cfg, lay = self.runtime, self.cfg, self.layout
        client = rt.client  # a clear error now when the engine is unreachable
        for d in (lay.root,):
            d.mkdir(parents=True, exist_ok=True)
        secrets = envgen.stack_secrets(lay)
        envgen.write_env_files(cfg, lay)
        colors = self.colors()
        active = colors["active"] = self.live_color() or colors["active"]
        self.deploy_state.save(colors)

        from aixsss_ops.runtime.docker_images import require_image

        infra = specs.infra(cfg)
        for image in sorted({s.image for s in infra}):
            require_image(client, image, "infra")
        actions += self._ensure_network_and_volumes()
        release, version, source = self._release(active)
        say(f"app image of {release}")
        rt.ensure_app_image(source, version)
        app = self.app_specs(active)
        self._check_ports([*infra, *app])

        by_service = {s.service: s for s in infra}
        backing = [by_service[n] for n in ("postgres", "redis", "s3")]
        for spec in backing:
            actions += self._ensure_running(spec, say)
        self.wait_ready(backing, say)

        created = ensure_role_and_database(
            self.admin_url(), cfg.postgres.database, cfg.postgres.user, secrets["postgres_app_password"]
        )
        actions += [f"created {c}" for c in created]
        applied = self._migrate(source / "migrations", say)
        actions += [f"applied migration {m}" for m in applied]
        if ensure_bucket(self.s3_target(), cfg.s3.bucket):
            actions.append(f"created bucket {cfg.s3.bucket}")

        for spec in app:
            actions += self._ensure_running(spec, say)
        self.wait_ready(app, say)
        actions += self._ensure_running(by_service["proxy"], say)
        for color in colors["colors"]:
            rel = self._release(color)
            if color == active or rt.find("api", color) is not None:
                rt.prepare_route(color, rel[2])
        if self.live_color() is None:
            rt.route(active)
            actions.append(f"routed the proxy to {active}")
        self.wait_ready([by_service["proxy"]], say)
        return self.status(actions)

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
        for key in specs.VOLUMES:
            name = specs.volume_name(self.cfg, key)
            try:
                client.volumes.get(name)
            except docker.errors.NotFound:
                client.volumes.create(name, labels=labels)
                out.append(f"created volume {name}")
        return out

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

    def _check_ports(self, all_specs: list[specs.ContainerSpec]) -> None:
        seen: dict[int, str] = {}
        for s in all_specs:
            for label, port in s.port_labels().items():
                if port in seen:
                    raise UsageError(f"port {port} is configured for both {seen[port]} and {label}")
                seen[port] = label
        if not engine_host(self.cfg).startswith("unix://"):
            return  # a remote engine publishes on its own machine: the engine reports a taken port at start
        for s in all_specs:
            if self.runtime.state(s.service, s.color) in ("RUNNING", "BACKOFF"):
                continue
            for label, port in s.port_labels().items():
                if not probes.port_free(self.cfg.host, port):
                    raise UsageError(
                        f"port {port} ({label}) is already in use on {self.cfg.host}",
                        hint=f"stop what holds it, or change ports in {self.cfg.config_path or 'ops.toml'}",
                    )

    def _probe(self, spec: specs.ContainerSpec) -> tuple[bool, str]:
        c = self.cfg
        if spec.service == "postgres":
            from aixsss_ops.dburl import parse_database_url

            return probes.postgres(parse_database_url(self.admin_url()).conninfo)
        if spec.service == "redis":
            return probes.redis_ping(c.host, c.ports.redis)
        if spec.service == "s3":
            ok, detail = probes.http(f"http://{c.host}:{c.ports.s3}/", expect_any_status=True)
            if not ok:
                return ok, detail
            r = self.runtime.exec("s3", ["python3", "-c", probes.SEAWEED_READY_SCRIPT, "/data", "http://127.0.0.1:9333"],
                                  timeout=10)
            out = (r.stdout or b"").decode(errors="replace").strip() or (r.stderr or b"").decode(errors="replace")[-200:]
            return r.returncode == 0, out
        if spec.service == "proxy":
            ok, body = probes.api_health(f"{self.url}/api/health")
            detail = f"serving {body.get('color')} {body.get('version')}" if ok else f"/api/health through the proxy: {body}"
            return ok, detail
        if spec.service == "api":
            ok, body = probes.api_health(f"http://{c.host}:{specs.api_port(c, spec.color)}/api/health")
            return ok, (f"version {body.get('version')}" if ok else f"/api/health: {body}")
        state = self.runtime.state(spec.service, spec.color)
        return state == "RUNNING", state.lower()

    def _logs_detail(self, spec: specs.ContainerSpec) -> str:
        name = specs.container_name(self.cfg, spec.unit)
        return f"last lines of {name}:\n{self.runtime.logs(spec.service, spec.color, 25)}"

    def wait_ready(self, defs: list[specs.ContainerSpec], say: Progress) -> None:  # type: ignore[override]
        deadline = time.monotonic() + self.cfg.supervisor.start_timeout
        pending = list(defs)
        while pending:
            for s in list(pending):
                state = self.runtime.state(s.service, s.color)
                if state in (*FAILED_STATES, "ABSENT"):
                    raise OpsError(f"{s.unit} failed to start ({state})", details=self._logs_detail(s))
                if state == "RUNNING" and self._probe(s)[0]:
                    pending.remove(s)
                    say(f"{s.unit} is ready")
            if not pending:
                break
            if time.monotonic() > deadline:
                s = pending[0]
                raise OpsError(
                    f"{s.unit} was not ready within {self.cfg.supervisor.start_timeout:.0f}s: {self._probe(s)[1]}",
                    details=self._logs_detail(s),
                )
            time.sleep(0.25)

    # -- down --
    def down(self, progress: Progress | None = None) -> StackReport:
        say = progress or (lambda _m: None)
        rt = self.runtime
        running = [c for c in rt.containers() if c.status in ("running", "restarting")]
        if not running:
            return StackReport(str(self.layout.root), self.url, None, [], ["stack was not running"])
        actions: list[str] = []
        for group in (("api", "worker"), ("proxy",), ("s3", "redis"), ("postgres",)):
            units = [(c.labels.get("io.aixsss.service"), c.labels.get("io.aixsss.color")) for c in running]
            units = [(s, col) for s, col in units if s in group]
            for s, col in units:
                say(f"stopping {unit_name(s, col) if col else s}")
                rt.stop(s, col, wait=False)
            deadline = time.monotonic() + self.cfg.supervisor.stop_timeout + 30
            while units and time.monotonic() < deadline:
                if all(rt.state(s, col) in STOPPED_STATES for s, col in units):
                    break
                time.sleep(0.2)
            actions += [f"stopped {unit_name(s, col) if col else s}" for s, col in units]
        return StackReport(str(self.layout.root), self.url, None, [], actions)

    # -- status --
    def status(self, actions: list[str] | None = None) -> StackReport:
        colors = self.colors()
        units = {u.unit: u for u in self.runtime.status()}
        active = self.live_color() or colors["active"]
        wanted = specs.infra(self.cfg) + self.app_specs(active)
        wanted += [s for c in colors["colors"] if c != active for s in self.app_specs(c) if s.unit in units]
        reports = []
        for s in wanted:
            u = units.get(s.unit)
            state = u.state if u else "ABSENT"
            if state == "RUNNING":
                healthy, detail = self._probe(s)
                if u.description and "unhealthy" in u.description:
                    detail = f"{detail}; docker: {u.description}"
            else:
                healthy, detail = False, (u.description if u else "no container (removed?): run 'stack up'")
            reports.append(
                ServiceReport(
                    s.unit,
                    state,
                    healthy,
                    detail,
                    s.port_labels(),
                    u.pid if u else None,
                    u.uptime_s if u else None,
                    "infra" if s.color is None else ("active" if s.color == active else "idle"),
                )
            )
        return StackReport(str(self.layout.root), self.url, active, reports, actions or [])

    # -- for doctor --
    def engine_problem(self) -> str | None:
        """Why the Docker engine cannot be asked (None when it answers)."""
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

    def logs(self, unit: str, lines: int = 100) -> str:
        known = {"postgres", "redis", "s3", "proxy"} | {f"{s}-{c}" for s in ("api", "worker") for c in ("blue", "green")}
        if unit not in known:
            raise UsageError(f"unknown service '{unit}'; one of: {', '.join(sorted(known))}")
        service, _, color = unit.partition("-")
        return self.runtime.logs(service, color or None, lines)
