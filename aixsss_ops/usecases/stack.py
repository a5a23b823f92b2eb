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
    else once it runs again). While a ``restore --to-time`` journal is pending the app is not started (it would run
    on whichever data folder that restore left live, before it is finished): a running stack is left as it is, a
    stopped one gets its infrastructure alone (what the restore needs to finish), and CheckFailed names the restore
    that finishes it."""
    from aixsss_ops.backup.pitr import journal_path
    from aixsss_ops.fsutil import read_json

    d = deployer(dep, say)
    pending = read_json(journal_path(dep.layout), None)
    if pending:
        from aixsss_ops.usecases.pitr_restore import pending_message, stack_down

        msg, hint = pending_message(pending)
        if stack_down(dep) is None:
            raise CheckFailed(f"{msg}: the stack is left as it is until it is finished", hint=hint)
        d.stack.up(progress=say, infra_only=True)
        raise CheckFailed(f"{msg}: the infrastructure is started, the app is not until it is finished", hint=hint)
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
    from aixsss_ops.queue.conn import target

    res = smoke_mod.run(url or dep.url, timeout, queue=target(dep) if url is None else None)
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
