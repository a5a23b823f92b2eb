"""``stack up | down | status``: the embedded stack as supervised local processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aixsss_ops import sysbin
from aixsss_ops.config import OpsConfig
from aixsss_ops.deploy import releases
from aixsss_ops.deploy.state import DeployState, now_iso
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.proxy import nginx
from aixsss_ops.runtime.local import LocalRuntime
from aixsss_ops.runtime.supervisor import Supervisor, tail
from aixsss_ops.s3 import S3Target, ensure_bucket
from aixsss_ops.stack import envgen, probes, services
from aixsss_ops.stack.layout import Layout
from aixsss_ops.stack.postgres import ensure_role_and_database

Progress = Callable[[str], None]
REQUIRED = ("postgres", "initdb", "redis-server", "nginx", "weed", "supervisord")
_FAILED_STATES = {"FATAL", "BACKOFF", "EXITED"}


@dataclass
class ServiceReport:
    unit: str
    state: str
    healthy: bool | None
    detail: str
    ports: dict[str, int] = field(default_factory=dict)
    pid: int | None = None
    uptime_s: int | None = None
    role: str = "infra"  # infra, active (the live color) or idle (the other color: informational)


@dataclass
class StackReport:
    state_dir: str
    url: str
    active_color: str | None
    services: list[ServiceReport]
    actions: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return bool(self.services) and all(s.healthy for s in self.services if s.role != "idle")

    def to_dict(self) -> dict:
        return {**asdict(self), "healthy": self.healthy}


class Stack:
    def __new__(cls, cfg: OpsConfig):
        # the engine comes from ops.toml: runtime = "docker" gives the docker stack (stack/docker_stack.py)
        if cls is Stack and cfg.runtime == "docker":
            from aixsss_ops.stack.docker_stack import DockerStack

            cls = DockerStack
        return super().__new__(cls)

    def __init__(self, cfg: OpsConfig):
        self.cfg = cfg
        self.layout = Layout(cfg.state)
        self.sup = Supervisor(self.layout.supervisor)
        self.runtime = LocalRuntime(cfg, self.layout, self.sup)
        self.deploy_state = DeployState(self.layout.deploy_dir)

    # -- what each color runs (see aixsss_ops.deploy) --
    def colors(self) -> dict:
        """The deploy state; on the very first use, blue runs a release built from the configured app source."""
        state = self.deploy_state.load()
        if not state:
            release, _ = releases.build(self.cfg.app_source, self.cfg.app.version, self.layout.releases)
            state = {"active": "blue", "colors": {"blue": color_spec(release)}}
        return state

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.ports.proxy}"

    def infra_defs(self) -> list[services.ServiceDef]:
        c, lay = self.cfg, self.layout
        return [services.postgres(c, lay), services.redis(c, lay), services.s3(c, lay), services.proxy(c, lay)]

    def app_defs(self, color: str) -> list[services.ServiceDef]:
        spec = self.colors()["colors"][color]
        src, ver = Path(spec["source"]), spec["version"]
        return [
            services.api(self.cfg, self.layout, color, src, ver),
            services.worker(self.cfg, self.layout, color, src, ver),
        ]

    def all_defs(self) -> list[services.ServiceDef]:
        defs = self.infra_defs()
        for color in self.colors()["colors"]:
            defs += self.app_defs(color)
        return defs

    def admin_url(self, database: str = "postgres") -> str:
        return envgen.admin_url(self.cfg, self.layout, database)

    def s3_target(self) -> S3Target:
        s = self.cfg.s3
        return S3Target(
            f"http://{self.cfg.host}:{self.cfg.ports.s3}", s.access_key, s.secret_key.get_secret_value(), s.region
        )

    # -- up --
    def up(self, progress: Progress | None = None) -> StackReport:
        say = progress or (lambda _m: None)
        actions: list[str] = []
        for prog in REQUIRED:
            sysbin.find(prog)
        lay = self.layout
        for d in (lay.root, lay.logs, lay.redis_dir, lay.s3_dir / "data", lay.nginx_dir):
            d.mkdir(parents=True, exist_ok=True)
        secrets = envgen.stack_secrets(lay)
        envgen.write_env_files(self.cfg, lay)
        services.write_s3_identities(self.cfg, lay)
        colors = self.colors()
        active = colors["active"] = self.live_color() or colors["active"]
        self.deploy_state.save(colors)

        pg = services.cluster(self.cfg, lay)
        if not pg.initialized:
            say("initialising the PostgreSQL cluster")
            pg.init(self.cfg.postgres.superuser, secrets["postgres_superuser_password"])
            actions.append("initdb")

        defs = self.all_defs()
        self._check_ports(defs)
        if self.sup.ensure_started():
            actions.append("started supervisord")
        for d in defs:
            self.sup.write_program(d.program)
        proxy_changed = self.configure_proxy(colors)
        changes = self.sup.apply()
        actions += [f"configured {n}" for n in changes["added"] + changes["changed"]]

        infra = [d for d in defs if d.service in ("postgres", "redis", "s3")]
        for d in infra:
            if self.unit_state(d.unit) != "RUNNING":
                say(f"starting {d.unit}")
                self.sup.start(d.unit)
                actions.append(f"started {d.unit}")
        self.wait_ready(infra, say)

        created = ensure_role_and_database(
            self.admin_url(), self.cfg.postgres.database, self.cfg.postgres.user, secrets["postgres_app_password"]
        )
        actions += [f"created {c}" for c in created]
        applied = self._migrate(Path(colors["colors"][active]["source"]) / "migrations", say)
        actions += [f"applied migration {m}" for m in applied]
        if ensure_bucket(self.s3_target(), self.cfg.s3.bucket):
            actions.append(f"created bucket {self.cfg.s3.bucket}")

        app = self.app_defs(active)
        for d in app:
            if self.unit_state(d.unit) != "RUNNING":
                say(f"starting {d.unit}")
                self.sup.start(d.unit)
                actions.append(f"started {d.unit}")
        self.wait_ready(app, say)
        proxy = next(d for d in defs if d.service == "proxy")
        if self.unit_state("proxy") != "RUNNING":
            self.sup.start("proxy")
            actions.append("started proxy")
        elif proxy_changed:
            self.runtime.signal("proxy", "HUP")
            actions.append("reloaded proxy")
        self.wait_ready([proxy], say)
        return self.status(actions)

    def _check_ports(self, defs: list[services.ServiceDef]) -> None:
        seen: dict[int, str] = {}
        for d in defs:
            for label, port in d.ports.items():
                if port in seen:
                    raise UsageError(f"port {port} is configured for both {seen[port]} and {label}")
                seen[port] = label
        for d in defs:
            if self.unit_state(d.unit) in ("RUNNING", "STARTING"):
                continue
            for label, port in d.ports.items():
                if not probes.port_free(self.cfg.host, port):
                    raise UsageError(
                        f"port {port} ({label}) is already in use on {self.cfg.host}",
                        hint=f"stop what holds it, or change ports in {self.cfg.config_path or 'ops.toml'}",
                    )

    def configure_proxy(self, colors: dict) -> bool:
        """Render the nginx config (``nginx -t`` first) and point each color's slot at its api and web build.

        Returns True when the config changed and a running nginx needs a graceful reload."""
        lay = self.layout
        text = nginx.render(listen_host=self.cfg.host, listen_port=self.cfg.ports.proxy, prefix=lay.nginx_dir, logs=lay.logs)
        changed = nginx.write_config(lay.nginx_conf, text)
        for color, spec in colors["colors"].items():
            self.runtime.prepare_route(color, Path(spec["source"]))
        if self.runtime.routed_color() is None:
            self.runtime.route(colors["active"])
        return changed

    def app_database_url(self) -> str:
        secret = envgen.stack_secrets(self.layout)["postgres_app_password"]
        return envgen.database_url(self.cfg, self.cfg.postgres.user, secret)

    def _migrate(self, migrations: Path, say: Progress) -> list[str]:
        from aixsss_ops.migrate import deploy

        result = deploy(self.app_database_url(), migrations)
        if result.applied:
            say(f"applied {len(result.applied)} migration(s)")
        return list(result.applied)

    def unit_state(self, unit: str) -> str:
        if not self.sup.sock.exists():
            return "ABSENT"
        info = self.sup.info(unit)
        return info["statename"] if info else "ABSENT"

    def probe(self, d: services.ServiceDef) -> tuple[bool, str]:
        c = self.cfg
        if d.service == "postgres":
            from aixsss_ops.dburl import parse_database_url

            return probes.postgres(parse_database_url(self.admin_url()).conninfo)
        if d.service == "redis":
            return probes.redis_ping(c.host, c.ports.redis)
        if d.service == "s3":
            ok, detail = probes.http(f"http://{c.host}:{c.ports.s3}/", expect_any_status=True)
            if not ok:
                return ok, detail
            volumes = len(list((self.layout.s3_dir / "data").glob("*.dat")))
            return probes.seaweed_volumes(f"http://{c.host}:{c.ports.weed_master}", volumes)
        if d.service == "proxy":
            ok, body = probes.api_health(f"{self.url}/api/health")
            return (
                ok,
                f"/api/health through the proxy: {body}" if not ok else f"serving {body.get('color')} {body.get('version')}",
            )
        if d.service == "api":
            ok, body = probes.api_health(f"http://{c.host}:{services.api_port(c, d.color)}/api/health")
            return ok, (f"version {body.get('version')}" if ok else f"/api/health: {body}")
        state = self.unit_state(d.unit)
        return state == "RUNNING", state.lower()

    def wait_ready(self, defs: list[services.ServiceDef], say: Progress) -> None:
        deadline = time.monotonic() + self.cfg.supervisor.start_timeout
        pending = list(defs)
        while pending:
            for d in list(pending):
                state = self.unit_state(d.unit)
                if state in _FAILED_STATES:
                    raise OpsError(
                        f"{d.unit} failed to start ({state})",
                        details=f"last lines of {self.sup.logfile(d.unit)}:\n{tail(self.sup.logfile(d.unit), 25)}",
                    )
                if state == "RUNNING" and self.probe(d)[0]:
                    pending.remove(d)
                    say(f"{d.unit} is ready")
            if not pending:
                break
            if time.monotonic() > deadline:
                d = pending[0]
                raise OpsError(
                    f"{d.unit} was not ready within {self.cfg.supervisor.start_timeout:.0f}s: {self.probe(d)[1]}",
                    details=f"last lines of {self.sup.logfile(d.unit)}:\n{tail(self.sup.logfile(d.unit), 25)}",
                )
            time.sleep(0.2)

    # -- down --
    def down(self, progress: Progress | None = None) -> StackReport:
        say = progress or (lambda _m: None)
        actions: list[str] = []
        if not self.sup.is_running():
            return StackReport(str(self.layout.root), self.url, None, [], ["stack was not running"])
        running = {u.unit for u in self.runtime.status() if u.state not in ("STOPPED", "EXITED", "FATAL")}
        order = [[u for u in running if u.startswith(("api-", "worker-"))], ["proxy"], ["s3", "redis"], ["postgres"]]
        for group in order:
            group = [u for u in group if u in running]
            for unit in group:
                say(f"stopping {unit}")
                self.sup.stop(unit, wait=False)
            self.wait_stopped(group)
            actions += [f"stopped {u}" for u in group]
        self.sup.shutdown()
        actions.append("stopped supervisord")
        return StackReport(str(self.layout.root), self.url, None, [], actions)

    def wait_stopped(self, units: list[str]) -> None:
        deadline = time.monotonic() + self.cfg.supervisor.stop_timeout + 30
        while units and time.monotonic() < deadline:
            if all(self.unit_state(u) in ("STOPPED", "EXITED", "FATAL", "ABSENT") for u in units):
                return
            time.sleep(0.2)

    # -- status --
    def status(self, actions: list[str] | None = None) -> StackReport:
        colors = self.colors()
        units = {u.unit: u for u in self.runtime.status()} if self.sup.is_running() else {}
        reports = []
        active = self.live_color() or colors["active"]
        defs = self.infra_defs() + self.app_defs(active)
        defs += [d for c in colors["colors"] if c != active for d in self.app_defs(c)]
        for d in defs:
            u = units.get(d.unit)
            state = u.state if u else ("ABSENT" if units else "STOPPED")
            healthy, detail = self.probe(d) if state == "RUNNING" else (False, (u.description if u else "") or state.lower())
            reports.append(
                ServiceReport(
                    d.unit,
                    state,
                    healthy,
                    detail,
                    d.ports,
                    u.pid if u else None,
                    u.uptime_s if u else None,
                    "infra" if d.color is None else ("active" if d.color == active else "idle"),
                )
            )
        return StackReport(str(self.layout.root), self.url, active, reports, actions or [])

    def live_color(self) -> str | None:
        """The color the proxy config sends traffic to (the truth, whatever colors.json says)."""
        return self.runtime.routed_color()

    # -- for doctor: the same questions on either engine --
    def engine_problem(self) -> str | None:
        """Why what runs the services cannot be asked (None when it answers): here, supervisord."""
        return None if self.sup.is_running() else f"the supervisor of {self.cfg.state} is not running"

    def proxy_config_check(self) -> tuple[bool, str, str | None]:
        """``nginx -t`` of the proxy's config: (accepted, message, fix)."""
        lay = self.layout
        if not lay.nginx_conf.exists():
            return False, f"no proxy config at {lay.nginx_conf}", "`aixsss-ops stack up` writes it"
        try:
            nginx.test_config(lay.nginx_conf, lay.nginx_dir)
        except OpsError as e:
            return (False, f"{e.message}: {(e.details or '').splitlines()[-1:] or ''}",
                    f"fix {lay.nginx_conf} (or rerun `aixsss-ops stack up`)")
        return True, f"nginx -t accepts {lay.nginx_conf}", None

    def logs(self, unit: str, lines: int = 100) -> str:
        known = {d.unit for d in self.all_defs()}
        if unit not in known:
            raise UsageError(f"unknown service '{unit}'; one of: {', '.join(sorted(known))}")
        return tail(self.sup.logfile(unit), lines)


def color_spec(release: releases.Release) -> dict:
    return {"release": release.id, "source": str(release.path), "version": release.version, "since": now_iso()}
