"""The runtime protocol: how deploy, backup and doctor start, stop and inspect a service of a color.

Two engines implement it: ``local`` (supervised processes) and, later, ``docker`` (Engine API).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Protocol

COLORS = ("blue", "green")
INFRA = ("postgres", "redis", "s3", "proxy")
APP = ("api", "worker")


def unit_name(service: str, color: str | None = None) -> str:
    if service in APP:
        if color not in COLORS:
            raise ValueError(f"{service} needs a color (blue or green), got {color!r}")
        return f"{service}-{color}"
    return service


@dataclass
class UnitStatus:
    unit: str
    service: str
    color: str | None
    state: str  # RUNNING, STOPPED, STARTING, BACKOFF, FATAL, EXITED, ABSENT
    pid: int | None = None
    uptime_s: int | None = None
    description: str = ""

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


class Runtime(Protocol):
    def start(self, service: str, color: str | None = None) -> None: ...

    def stop(self, service: str, color: str | None = None) -> None: ...

    def signal(self, service: str, sig: str, color: str | None = None) -> None: ...

    def status(self) -> list[UnitStatus]: ...

    def exec(
        self, service: str, argv: list[str], color: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess: ...

    def logs(self, service: str, color: str | None = None, lines: int = 100) -> str: ...
