"""The local engine: every service is a program of the state directory's supervisord."""

from __future__ import annotations

import os
import pwd
import subprocess
import time

from aixsss_ops.errors import OpsError
from aixsss_ops.runtime.base import APP, UnitStatus, unit_name
from aixsss_ops.runtime.supervisor import Supervisor, tail


class LocalRuntime:
    def __init__(self, supervisor: Supervisor, users: dict[str, str] | None = None):
        self.sup = supervisor
        self.users = users or {}

    def start(self, service: str, color: str | None = None) -> None:
        self.sup.start(unit_name(service, color))

    def stop(self, service: str, color: str | None = None) -> None:
        self.sup.stop(unit_name(service, color))

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
        if service in APP and color is None:
            raise OpsError(f"{service} runs per color: name one (blue or green)")
        return tail(self.sup.logfile(unit_name(service, color)), lines)
