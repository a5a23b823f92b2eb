"""The local engine: every service is a program of the state directory's supervisord; the proxy routes
to a color through the ``live`` symlink (see proxy/nginx.py)."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

from aixsss_ops.config import OpsConfig
from aixsss_ops.context.layout import Layout
from aixsss_ops.errors import OpsError
from aixsss_ops.fsutil import atomic_write
from aixsss_ops.proxy import nginx
from aixsss_ops.runtime import local_specs as services
from aixsss_ops.runtime.base import UnitStatus, is_app, unit_name
from aixsss_ops.runtime.supervisor import Supervisor, tail


class LocalRuntime:
    def __init__(self, cfg: OpsConfig, layout: Layout, supervisor: Supervisor):
        self.cfg = cfg
        self.layout = layout
        self.sup = supervisor
        self.users = {"postgres": cfg.postgres.os_user}

    def define_app(self, color: str, source: Path, version: str) -> None:
        """The programs of ``color``'s processes; a program of the color the description no longer has (a role
        removed, a count lowered) is removed (supervisord stops it)."""
        defs = services.app_processes(self.cfg, self.layout, color, source, version)
        for d in defs:
            self.sup.write_program(d.program)
        current = {d.program.name for d in defs}
        for f in self.sup.include_dir.glob(f"*-{color}.conf"):
            if f.stem not in current and is_app(f.stem.rpartition("-")[0]):
                f.unlink()
        self.sup.apply()

    def build_release(self, release: Path, version: str, say) -> None:
        """The release's build steps, run in it on this host."""
        from aixsss_ops import releases

        releases.run_steps(release, version, self.cfg.app.build, say)

    def start(self, service: str, color: str | None = None, detach: bool = False) -> None:  # supervisord answers at once
        unit = unit_name(service, color)
        if self.state(service, color) not in ("RUNNING", "STARTING"):
            log = self.sup.logfile(unit)
            self.layout.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self._log_mark(unit), str(log.stat().st_size if log.exists() else 0))
        self.sup.start(unit)

    def _log_mark(self, unit: str) -> Path:
        return self.layout.run_dir / f"{unit}.log-start"

    def logs_since_start(self, service: str, color: str | None = None) -> str:
        unit = unit_name(service, color)
        log = self.sup.logfile(unit)
        try:
            start = int(self._log_mark(unit).read_text())
        except (OSError, ValueError):
            start = 0
        try:
            with log.open("rb") as f:
                size = f.seek(0, 2)
                start = start if start <= size else 0  # rotated since
                f.seek(max(start, size - 1_000_000))
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self, service: str, color: str | None = None, wait: bool = True) -> None:
        self.sup.stop(unit_name(service, color), wait=wait)

    def state(self, service: str, color: str | None = None) -> str:
        if not self.sup.sock.exists():
            return "ABSENT"
        info = self.sup.info(unit_name(service, color))
        return info["statename"] if info else "ABSENT"

    def signal(self, service: str, sig: str, color: str | None = None) -> None:
        self.sup.signal(unit_name(service, color), sig)

    def status(self) -> list[UnitStatus]:
        out = []
        now = time.time()
        for name, p in sorted(self.sup.all_info().items()):
            service, _, color = name.partition("-")
            running = p["statename"] == "RUNNING"
            out.append(
                UnitStatus(
                    unit=name,
                    service=service,
                    color=color or None,
                    state=p["statename"],
                    pid=p["pid"] or None,
                    uptime_s=int(now - p["start"]) if running and p["start"] else None,
                    description=p.get("spawnerr") or "",
                )
            )
        return out

    def exec(
        self, service: str, argv: list[str], color: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess:
        """Run a one-off command as the service runs (same account), e.g. pg_dump for postgres."""
        user = self.users.get(service) if os.geteuid() == 0 else None
        kw = {}
        if user:
            acct = pwd.getpwnam(user)
            kw = {"user": acct.pw_uid, "group": acct.pw_gid, "extra_groups": []}
        try:
            return subprocess.run(argv, capture_output=True, timeout=timeout, **kw)
        except subprocess.TimeoutExpired:
            raise OpsError(f"{argv[0]} for {service} did not finish within {timeout:.0f}s") from None

    def logs(self, service: str, color: str | None = None, lines: int = 100) -> str:
        if is_app(service) and color is None:
            raise OpsError(f"{service} runs per color: name one (blue or green)")
        return tail(self.sup.logfile(unit_name(service, color)), lines)

    def prepare_route(self, color: str, source: Path) -> None:
        """The color's api: its own unix socket, or (an api on TCP only) nginx's socket forwarding to its port."""
        self.layout.run_dir.mkdir(parents=True, exist_ok=True)
        own = self.cfg.app.processes["api"].socket_env
        sock = self.layout.api_socket(color) if own else nginx.color_socket(self.layout.run_dir, color)
        nginx.prepare_color(self.layout.nginx_dir, color, sock, source / self.cfg.app.web_root)

    def route(self, color: str) -> None:
        nginx.switch_live(self.layout.nginx_dir, color)

    def routed_color(self) -> str | None:
        return nginx.live_color(self.layout.nginx_dir)
