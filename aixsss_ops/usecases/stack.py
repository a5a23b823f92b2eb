"""The embedded stack of a deployment: ``stack up`` (which first repairs what a killed deploy left) and
``stack smoke``."""

from __future__ import annotations

from collections.abc import Callable

from aixsss_ops import appspec
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.errors import CheckFailed
from aixsss_ops.stack import smoke as smoke_mod
from aixsss_ops.stack.engines import open_stack
from aixsss_ops.stack.manager import StackReport
from aixsss_ops.stack.smoke import SmokeResult
from aixsss_ops.usecases.deploy import deployer


def up(dep: Deployment, say: Callable[[str], None] = lambda _m: None) -> StackReport:
    """Start or repair the stack; a color a killed deploy left booting is stopped (before, when the engine answers,
    else once it runs again)."""
    d = deployer(dep, say)
    had_state = d.stack.deploy_state.load() is not None
    recovered = d.recover() if had_state and d.stack.engine_problem() is None else None
    report = d.stack.up(progress=say)
    recovered = recovered or (d.recover() if had_state else None)
    if recovered:
        report.actions.insert(0, recovered)
    return report


def smoke(dep: Deployment, timeout: float = 60.0, url: str | None = None) -> SmokeResult:
    """The end-to-end check through the proxy (``url``: another one), and, on the stack's own proxy, every other
    process of the live color ready (the worker's ready signal)."""
    res = smoke_mod.run(url or dep.url, timeout)
    if url is None:
        stack = open_stack(dep)
        live = stack.live_color()
        spec = stack.colors().spec(live) if live else None
        if spec is not None:
            res.color, res.version = res.color or live, res.version or spec.version
            for role in appspec.others(dep.cfg):
                ok, detail = stack.ready(role, live)
                if not ok:
                    raise CheckFailed(f"{role}-{live} is not ready: {detail}")
                res.steps.append(f"{role}-{live} ready: {detail}")
    return res
