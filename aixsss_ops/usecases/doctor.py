"""``doctor`` of a deployment: every selected check in parallel, each with its timeout (the command and the
``doctor`` playbook action)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from aixsss_ops.context.deployment import Deployment
from aixsss_ops.doctor import runner
from aixsss_ops.doctor.context import Context
from aixsss_ops.doctor.registry import select
from aixsss_ops.findings import Finding
from aixsss_ops.output import scrubber


def run_doctor(dep: Deployment, only: list[str] | None = None, skip: list[str] | None = None, timeout: float = 3.0,
               migrations_dir: Path | None = None) -> runner.Report:
    checks = select(only, skip)
    ctx = Context(dep, timeout=timeout, migrations_dir=migrations_dir)
    with contextlib.suppress(Exception):  # an unreadable env file: the env check reports it
        scrubber.add(*ctx.secrets())
    report = runner.run(checks, ctx)
    said = {f.check for f in report.findings}
    for ch in checks:  # a check named on its own that has nothing to say here (backup.pitr-* with pitr off, …)
        if ch.name in (only or []) and ch.name not in said:
            report.findings.append(Finding(ch.name, "skipped", "does not apply to this deployment"))
    return report
