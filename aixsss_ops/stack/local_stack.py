"""The embedded stack as supervised local processes (``runtime = "local"``): one supervisord per state directory."""

from __future__ import annotations

import os
import stat

from aixsss_ops import probes, sysbin
from aixsss_ops.context import envgen
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.context.deploystate import Colors
from aixsss_ops.context.embedded import ensure_secrets
from aixsss_ops.errors import OpsError
from aixsss_ops.proxy import nginx
from aixsss_ops.runtime import local_specs as services
from aixsss_ops.runtime.base import COLORS, api_port, is_app
from aixsss_ops.runtime.local import LocalRuntime
from aixsss_ops.runtime.supervisor import Orphan, Supervisor
from aixsss_ops.stack.manager import INFRA_STOP_ORDER, Progress, ServiceReport, Stack, StackReport

REQUIRED = ("postgres", "initdb", "redis-server", "nginx", "weed", "supervisord")
PRIVATE = ("logs", "redis", "s3", "env", "secrets", "keys", "supervisor", "backups")  # the owner's alone


def private_state(lay, proxy_group: int | None) -> None:
    """What the stack keeps is its owner's alone: these folders 0700 and what is in them not readable by others
    (also what earlier versions wrote 0644); the api sockets' folder 0750, group = the proxy workers' group, so
    nginx alone reaches them."""
    for name in PRIVATE:
        top = lay.root / name
        if not top.is_dir():
            continue
        os.chmod(top, 0o700)
        for dirpath, dirnames, filenames in os.walk(top):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                    os.chmod(p, stat.S_IMODE(st.st_mode) & 0o700)
    os.chmod(lay.run_dir, 0o750)
    if proxy_group is not None and os.geteuid() == 0:
        os.chown(lay.run_dir, -1, proxy_group)


class LocalStack(Stack):
    def __init__(self, dep: Deployment):
        super().__init__(dep)
        self.sup = Supervisor(self.layout.supervisor)
        self.runtime = LocalRuntime(self.cfg, self.layout, self.sup)

    def infra_defs(self) -> list[services.ServiceDef]:
        c, lay = self.cfg, self.layout
        backing = [services.postgres(c, lay), services.redis(c, lay), services.s3(c, lay)]
        return [*(d for d in backing if d.service not in c.external), services.proxy(c, lay)]

    def _archiving(self) -> list[str]:
        """With ``backup.pitr``: the pgBackRest stanza, so the cluster's WAL archiving succeeds from the start."""
        from aixsss_ops.backup import pitr

        eng = pitr.engine_for(self.cfg, self.layout, write_config=False)
        if eng is None or eng.info().exists:
            return []
        eng.stanza_create()
        return [f"created the pgBackRest stanza {eng.stanza}"]

    def app_defs(self, color: str) -> list[services.ServiceDef]:
        spec = self.colors().spec(color)
        return services.app_processes(self.cfg, self.layout, color, spec.path, spec.version)

    def up(self, progress: Progress | None = None, infra_only: bool = False) -> StackReport:
        say = progress or (lambda _m: None)
        actions: list[str] = []
        for prog in REQUIRED:
            sysbin.find(prog)
        lay = self.layout
        for d in (lay.root, lay.logs, lay.redis_dir, lay.s3_dir / "data", lay.nginx_dir, lay.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        secrets = ensure_secrets(lay)
        self.check_external(say)  # a wrong URL or password is refused before the env files would keep it
        envgen.write_env_files(self.cfg, lay, self.dep.environ)
        services.write_s3_identities(self.cfg, lay)
        services.write_redis_conf(lay, secrets["redis_password"])
        private_state(lay, nginx.worker_group())
        colors = self.colors(say)
        colors.active = self.live_color() or colors.active
        self.deploy_state.save(colors)

        pg = services.cluster(self.cfg, lay)
        if "postgres" not in self.cfg.external and not pg.initialized:
            say("initialising the PostgreSQL cluster")
            pg.init(self.cfg.postgres.superuser, secrets["postgres_superuser_password"])
            actions.append("initdb")

        served = self._tls_cert()
        defs = self.infra_defs() + [d for c in colors.colors for d in self.app_defs(c)]  # the s3 def renews it
        actions += self._stop_orphans(say)  # what a killed supervisord left holds the ports and the data folders
        self._check_ports(defs)
        if self.sup.ensure_started():
            actions.append("started supervisord")
        kept = self._kept_as_deployed(defs)
        for d in defs:
            if d.unit not in kept:
                self.sup.write_program(d.program)
        for unit in kept:
            say(f"warning: {kept[unit]}")
        proxy_changed = self._configure_proxy(colors)
        changes = self.sup.apply()
        actions += [f"configured {n}" for n in changes["added"] + changes["changed"]]
        if served is not None and self._tls_cert() != served and self.unit_state("s3") == "RUNNING":
            say("restarting s3: its HTTPS certificate was made again")  # the store reads it at its start only
            self.runtime.stop("s3")
            actions.append("stopped s3 (a new HTTPS certificate)")

        infra = [d for d in defs if d.service in ("postgres", "redis", "s3")]
        actions += self._start(infra, say)
        self.wait_ready(infra, say)
        if infra_only:
            return self.status(actions)
        actions += self._prepare_data(colors.spec(colors.active), say)
        actions += self._archiving()
        app = self.app_defs(colors.active)
        actions += self._start(app, say)
        self.wait_ready(app, say)
        proxy = next(d for d in defs if d.service == "proxy")
        if self.unit_state("proxy") != "RUNNING":  # its start ends what a killed nginx left (proxy/launch.py)
            actions += self._start([proxy], say)
        elif proxy_changed:
            self.runtime.signal("proxy", "HUP")
            actions.append("reloaded proxy")
        self.wait_ready([proxy], say)
        report = self.status(actions)
        report.warnings = list(kept.values())
        return report

    def _kept_as_deployed(self, defs: list[services.ServiceDef]) -> dict[str, str]:
        """The app's running processes whose description in ops.toml is no longer the one they run, and why each
        is left alone: a running color keeps what it was deployed with (a changed description goes live through
        `deploy`, behind its health gate). A stopped one starts from the current description."""
        kept = {}
        for d in defs:
            if d.color is None or self.unit_state(d.unit) not in ("RUNNING", "STARTING"):
                continue
            conf = self.sup.include_dir / f"{d.program.name}.conf"
            try:
                deployed = conf.read_text()
            except FileNotFoundError:
                continue
            if deployed != d.program.render(self.sup.logfile(d.program.name)):
                kept[d.unit] = (f"{d.unit} keeps running as deployed: its description in ops.toml "
                                f"(app.processes.{d.service}) differs from the deployed one; `aixsss-ops deploy --force` "
                                "applies it behind the health gate")
        return kept

    def _tls_cert(self) -> bytes | None:
        """The embedded store's HTTPS certificate as its files hold it now (None: no HTTPS port, or none yet)."""
        from aixsss_ops.runtime import pgbackrest_repo

        if services.s3_tls_port(self.cfg) is None:
            return None
        try:
            return pgbackrest_repo.tls_files(self.layout)["cert"].read_bytes()
        except FileNotFoundError:
            return None

    def _start(self, defs: list[services.ServiceDef], say: Progress) -> list[str]:
        started = []
        for d in defs:
            if self.unit_state(d.unit) != "RUNNING":
                say(f"starting {d.unit}")
                self.runtime.start(d.service, d.color)
                started.append(f"started {d.unit}")
        return started

    def _configure_proxy(self, colors: Colors) -> bool:
        """Render the nginx config (``nginx -t`` first) and point each color's slot at its api and web build.

        Returns True when the config changed and a running nginx needs a graceful reload."""
        lay, cfg = self.layout, self.cfg
        tcp = {} if cfg.app.processes["api"].socket_env else {c: (cfg.host, api_port(cfg, c)) for c in COLORS}
        text = nginx.render(listen_host=cfg.host, listen_port=cfg.ports.proxy, prefix=lay.nginx_dir, logs=lay.logs,
                            run_dir=lay.run_dir, tcp=tcp)
        changed = nginx.write_config(lay.nginx_conf, text)
        for color, spec in colors.colors.items():
            self.runtime.prepare_route(color, spec.path)
        if self.runtime.routed_color() is None:
            self.runtime.route(colors.active)
        return changed

    def _probe_s3_volumes(self) -> tuple[bool, str]:
        volumes = len(list((self.layout.s3_dir / "data").glob("*.dat")))
        return probes.seaweed_volumes(f"http://{self.cfg.host}:{self.cfg.ports.weed_master}", volumes)

    def _logs_detail(self, d: services.ServiceDef) -> str:
        from aixsss_ops.runtime.supervisor import tail

        return f"last lines of {self.sup.logfile(d.unit)}:\n{tail(self.sup.logfile(d.unit), 25)}"

    def _engine_running(self) -> bool:
        return self.sup.is_running()

    def _engine_down(self) -> list[str]:
        self.sup.shutdown()
        return ["stopped supervisord"]

    # -- what a killed supervisord left --
    def _orphans(self) -> dict[str, list[Orphan]]:
        """Program -> its processes still running after this state directory's supervisord was killed (empty
        while it runs)."""
        if self.sup.is_running():
            return {}
        out: dict[str, list[Orphan]] = {}
        for o in self.sup.orphans():
            out.setdefault(o.program or f"pid {o.pgid}", []).append(o)
        return out

    def _stop_orphans(self, say: Progress) -> list[str]:
        """Stop what a killed supervisord left running, in ``down``'s order (the app's workers, its api, the proxy,
        Postgres (SIGINT: a fast shutdown), then the store and Redis); an OpsError naming what did not stop."""
        orphans = self._orphans()
        if not orphans:
            return []
        say(f"the supervisord of {self.cfg.state} was killed (pid {self.sup.killed()}); stopping what it left "
            f"running: {', '.join(sorted(orphans))}")
        apps = [n for n in orphans if "-" in n and is_app(n.partition("-")[0])]  # a color's process
        workers = [n for n in apps if n.partition("-")[0] != "api"]
        order = [workers, [n for n in apps if n not in workers], *(list(g) for g in INFRA_STOP_ORDER)]
        stopped, left = self.sup.stop_orphans(order, say)
        if left:
            raise OpsError(f"{', '.join(left)}, left running by the killed supervisord of {self.cfg.state}, did not "
                           "stop", hint="see `aixsss-ops stack status`, then rerun the command")
        return [f"stopped orphaned {n} (its supervisord was killed)" for n in stopped]

    def _orphans_note(self, orphans: dict[str, list[Orphan]]) -> str:
        return (f"the supervisor of {self.cfg.state} is not running (killed: its pid file names pid "
                f"{self.sup.killed()}) and left {', '.join(sorted(orphans))} running orphaned; `aixsss-ops stack down` "
                "stops them, `aixsss-ops stack up` stops them and starts the stack again")

    def down(self, progress: Progress | None = None) -> StackReport:
        """``Stack.down``; when the supervisord was killed, what it left running is stopped instead."""
        if not self.sup.is_running():
            actions = self._stop_orphans(progress or (lambda _m: None))
            if actions:
                return StackReport(str(self.layout.root), self.url, None, [], actions)
        return super().down(progress)

    def status(self, actions: list[str] | None = None) -> StackReport:
        """``Stack.status``; when the supervisord was killed, each program it left running is ORPHANED (unhealthy,
        with its pids) and a warning says so."""
        report = super().status(actions)
        orphans = self._orphans()
        if not orphans:
            return report
        report.warnings.append(self._orphans_note(orphans))
        for s in report.services:
            procs = orphans.pop(s.unit, None)
            if procs:
                s.state, s.healthy, s.pid, s.uptime_s = "ORPHANED", False, procs[0].pid, None
                s.detail = _orphan_detail(procs)
            elif s.state == "STOPPED":
                s.detail = "not running: its supervisord was killed"
        for name, procs in sorted(orphans.items()):  # an idle color's, or a program no longer defined
            service, _, color = name.partition("-")
            role = "infra" if not color else ("active" if color == report.active_color else "idle")
            report.services.append(ServiceReport(name, "ORPHANED", False, _orphan_detail(procs), pid=procs[0].pid,
                                                 role=role))
        return report

    def engine_problem(self) -> str | None:
        if self.sup.is_running():
            return None
        orphans = self._orphans()
        return self._orphans_note(orphans) if orphans else f"the supervisor of {self.cfg.state} is not running"

    def proxy_config_check(self) -> tuple[bool, str, str | None]:
        lay = self.layout
        if not lay.nginx_conf.exists():
            return False, f"no proxy config at {lay.nginx_conf}", "`aixsss-ops stack up` writes it"
        try:
            nginx.test_config(lay.nginx_conf, lay.nginx_dir)
        except OpsError as e:
            return (False, f"{e.message}: {(e.details or '').splitlines()[-1:] or ''}",
                    f"fix {lay.nginx_conf} (or rerun `aixsss-ops stack up`)")
        return True, f"nginx -t accepts {lay.nginx_conf}", None


def _orphan_detail(procs: list[Orphan]) -> str:
    pids = ", ".join(str(o.pid) for o in procs)
    return f"left running by its killed supervisord: pid {pids}"
