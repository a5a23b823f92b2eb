"""``doctor`` of a deployment: every selected check in parallel, each with its timeout (the command and the
``doctor`` playbook action)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from aixsss_ops.context.deployment import Deployment
from aixsss_ops.doctor import runner
from aixsss_ops.doctor.context import Context
from aixsss_ops.doctor.registry import select
from aixsss_ops.output import scrubber


def run_doctor(dep: Deployment, only: list[str] | None = None, skip: list[str] | None = None, timeout: float = 3.0,
               migrations_dir: Path | None = None) -> runner.Report:
    checks = select(only, skip)
    ctx = Context(dep, timeout=timeout, migrations_dir=migrations_dir)
    with contextlib.suppress(Exception):  # an unreadable env file: the env check reports it
        scrubber.add(*ctx.secrets())
    return runner.run(checks, ctx)
