"""The health gate: the new color's api must answer 2xx on /api/health and /api/ready, N times in a row."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aixsss_ops import probes


@dataclass
class GateResult:
    ok: bool
    checks: int = 0
    consecutive: int = 0
    seconds: float = 0.0
    last_error: str | None = None
    log: list[str] = field(default_factory=list)


def gate(
    base_url: str, *, threshold: int, interval: float, timeout: float, alive: Callable[[], str | None] = lambda: None
) -> GateResult:
    """``alive`` returns why the service can no longer pass (it exited), or None; the gate stops early then."""
    res = GateResult(ok=False)
    start = time.monotonic()
    while True:
        dead = alive()
        if dead:
            res.last_error = dead
            break
        res.checks += 1
        ok_h, body = probes.api_health(f"{base_url}/api/health")
        ok_r, ready = probes.http(f"{base_url}/api/ready")
        if ok_h and ok_r:
            res.consecutive += 1
            if res.consecutive >= threshold:
                res.ok = True
                break
        else:
            res.consecutive = 0
            res.last_error = f"/api/health: {body}" if not ok_h else f"/api/ready: {ready}"
        if time.monotonic() - start > timeout:
            break
        time.sleep(interval)
    res.seconds = round(time.monotonic() - start, 3)
    return res
