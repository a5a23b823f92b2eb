"""Validation of the services' environment (``env validate``, the ``env.validate`` playbook action)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aixsss_ops.context.deployment import Deployment
from aixsss_ops.context.settings import ENV_FILES
from aixsss_ops.envcheck import sources
from aixsss_ops.envcheck.rules import validate
from aixsss_ops.findings import Finding
from aixsss_ops.output import scrubber


@dataclass
class EnvReport:
    services: list[str]
    origins: dict[str, str]
    findings: list[Finding]
    envs: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)  # what was checked (not in to_dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "warn"]

    def ok(self, strict: bool = False) -> bool:
        return not self.errors and not (strict and self.warnings)

    def to_dict(self, strict: bool = False) -> dict:
        return {"ok": self.ok(strict), "services": self.services, "origins": self.origins, "errors": len(self.errors),
                "warnings": len(self.warnings), "findings": [f.to_dict() for f in self.findings]}


def stack_env_files(dep: Deployment) -> dict[str, Path]:
    return {svc: dep.layout.env_file(svc) for svc in ENV_FILES}


def validate_env(dep: Deployment, services: list[str] | None = None, given: Mapping[str, Path] | None = None,
                 with_environ: bool = False) -> EnvReport:
    """Each service's env (the stack's env files, or ``given`` ones; the process environment laid over them with
    ``with_environ``) against the contract, api/worker agreement and the production rules."""
    services = list(services or ENV_FILES)
    given = dict(given or {})
    defaults = {} if given and len(services) == 1 else stack_env_files(dep)
    src = sources.load(services, defaults, given, dict(dep.environ) if with_environ else None)
    scrubber.add(*sources.secret_values(src.envs))
    findings = validate(src.envs, src.origins, queue=None if given else dep.cfg.app.queue)  # ops.toml's: own files
    return EnvReport(services, src.origins, src.problems + findings, src.envs)
