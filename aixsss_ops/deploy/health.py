"""The health gate: the new color's api must pass its readiness check (ops.toml ``app.processes.api.ready``)
N times in a row, and every process of the color must stay the process it was when first seen running."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aixsss_ops.runtime.base import FAILED_STATES

# a process as its runtime shows it now: (state, pid, start time in epoch seconds); pid or start time may be None
Identity = tuple[str, int | None, float | None]
GONE = (*FAILED_STATES, "STOPPED", "STOPPING", "ABSENT")
START_SLACK = 2.0  # seconds a start time derived from a whole-second uptime may move without the process restarting


@dataclass
class GateResult:
    ok: bool
    checks: int = 0
    consecutive: int = 0
    seconds: float = 0.0
    last_error: str | None = None
    log: list[str] = field(default_factory=list)


def gate(check: Callable[[], tuple[bool, str]], *, threshold: int, interval: float, timeout: float,
         alive: Callable[[], str | None] = lambda: None) -> GateResult:
    """``check`` answers (passed, detail); ``alive`` returns why the service can no longer pass (it exited), or
    None; the gate stops early then."""
    res = GateResult(ok=False)
    start = time.monotonic()
    while True:
        dead = alive()
        if dead:
            res.last_error = dead
            break
        res.checks += 1
        ok, detail = check()
        if ok:
            res.consecutive += 1
            if res.consecutive >= threshold:
                res.ok = True
                break
        else:
            res.consecutive = 0
            res.last_error = detail
        if time.monotonic() - start > timeout:
            break
        time.sleep(interval)
    res.seconds = round(time.monotonic() - start, 3)
    return res


class Stability:
    """The processes a gate watches, each as first seen running: its pid, else (an engine that shows none) its start
    time. ``check`` says why one of them is no longer that process: it exited or failed, or its runtime started it
    again (another pid, a later start), however briefly it was down between two looks."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[int | None, float | None] | None] = {}

    def watch(self, unit: str) -> None:
        self.first.setdefault(unit, None)

    def check(self, units: Mapping[str, Identity]) -> str | None:
        for unit, first in self.first.items():
            state, pid, started = units.get(unit, ("ABSENT", None, None))
            if first is None:
                if pid is not None or started is not None:
                    self.first[unit] = (pid, started)
                continue  # not seen running yet: its start is under way (the caller checks its state)
            pid0, started0 = first
            if state in GONE:
                return f"{unit} exited after it was seen running (pid {pid0}): it is {state}"
            if pid0 is not None and pid is not None and pid != pid0:
                return (f"{unit} was restarted (pid {pid0} -> {pid}): it exited and its runtime started it again")
            if pid0 is None and started0 is not None and started is not None and started - started0 > START_SLACK:
                return f"{unit} was restarted ({started - started0:.0f}s after its first start): it exited and its " \
                       "runtime started it again"
        return None
