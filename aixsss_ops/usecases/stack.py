"""The embedded stack of a deployment: ``stack up`` repairs what a killed deploy left first."""

from __future__ import annotations

from collections.abc import Callable

from aixsss_ops.context.deployment import Deployment
from aixsss_ops.stack.manager import StackReport
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
