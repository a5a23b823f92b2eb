"""The health gate: the new color's api must pass its readiness check (ops.toml ``app.processes.api.ready``)
N times in a row."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


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
