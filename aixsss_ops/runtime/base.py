"""The runtime protocol: how stack, deploy, backup and doctor start, stop and inspect a service of a color.

Two engines implement it: ``local`` (supervised processes, runtime/local.py) and ``docker`` (Engine API).
Callers never reach past it to an engine's own mechanism.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aixsss_ops.poll import poll_until

if TYPE_CHECKING:
    from aixsss_ops.config import OpsConfig

COLORS = ("blue", "green")
INFRA = ("postgres", "redis", "s3", "proxy")  # every other service is a process of the app, run per color
STOPPED_STATES = ("STOPPED", "EXITED", "FATAL", "ABSENT")
FAILED_STATES = ("FATAL", "BACKOFF", "EXITED")


def is_app(service: str) -> bool:
    """A process of the app (api, worker, or any other role ops.toml describes), as opposed to the infra."""
    return service not in INFRA


def unit_name(service: str, color: str | None = None) -> str:
    if is_app(service):
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
    replicas: str = ""  # a cluster engine's replicas of it and their nodes ("2/3 running on node1, node2")

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


class Runtime(Protocol):
    def define_app(self, color: str, source: Path, version: str) -> None:
        """(Re)define api and worker of ``color`` to run the release at ``source``; starts nothing."""

    def build_release(self, release: Path, version: str, say: Callable[[str], None]) -> None:
        """Run the app's build steps (``app.build``) for the release copied at ``release``; raise BuildFailed."""

    def start(self, service: str, color: str | None = None, detach: bool = False) -> None:
        """Start without waiting; poll ``state`` for RUNNING. ``detach``: the command may also end before the engine
        answered (it carries the start through on its own); a failure it reports later shows in ``state``."""

    def stop(self, service: str, color: str | None = None, wait: bool = True) -> None: ...

    def state(self, service: str, color: str | None = None) -> str: ...

    def signal(self, service: str, sig: str, color: str | None = None) -> None: ...

    def status(self) -> list[UnitStatus]: ...

    def exec(
        self, service: str, argv: list[str], color: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess: ...

    def logs(self, service: str, color: str | None = None, lines: int = 100) -> str: ...

    def logs_since_start(self, service: str, color: str | None = None) -> str:
        """What the service logged since it was last started (its readiness line, if any)."""

    def prepare_route(self, color: str, source: Path) -> None:
        """Make ``color`` routable by the proxy (its api and the web build of ``source``) without routing to it."""

    def route(self, color: str) -> None:
        """Send every new proxied request to ``color``, atomically; requests in flight finish where they are."""

    def routed_color(self) -> str | None: ...


def wait_stopped(rt: Runtime, units: list[tuple[str, str | None]], timeout: float) -> bool:
    """True once every unit is stopped, False after ``timeout`` seconds."""
    return not not_stopped(rt, units, timeout)


def not_stopped(rt: Runtime, units: list[tuple[str, str | None]], timeout: float) -> list[tuple[str, str | None]]:
    """Wait until every unit is stopped, at most ``timeout`` seconds; the units still not stopped then (empty once
    every one is)."""
    left = list(units)
    if not units:
        return left

    def check() -> bool:
        left[:] = [(s, c) for s, c in units if rt.state(s, c) not in STOPPED_STATES]
        return not left

    poll_until(check, timeout)
    return left


def api_port(cfg: OpsConfig, color: str) -> int:
    """The port the api of ``color`` listens on (the health gate and the proxy reach it there)."""
    return cfg.ports.api_blue if color == "blue" else cfg.ports.api_green
