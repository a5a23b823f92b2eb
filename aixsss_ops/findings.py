"""The one shape every check reports in (doctor, env validate, queue checks): a :class:`Finding`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail", "skipped"]
STATUS_ORDER = {"fail": 0, "warn": 1, "skipped": 2, "ok": 3}


@dataclass
class Finding:
    """One result of one check: what was checked, how it went, what was seen, and a concrete fix.

    ``service`` and ``variable`` are set by the env rules (which variable of which service); the
    message never holds a secret value (lengths and fingerprints are fine)."""

    check: str
    status: Status
    message: str
    fix: str | None = None
    service: str | None = None
    variable: str | None = None

    def to_dict(self) -> dict:
        d = {"check": self.check, "status": self.status, "message": self.message, "fix": self.fix}
        if self.service is not None:
            d["service"] = self.service
        if self.variable is not None:
            d["variable"] = self.variable
        return d


def worst(findings: list[Finding]) -> Status:
    """The most severe status among ``findings`` (ok when empty)."""
    return min((f.status for f in findings), key=STATUS_ORDER.__getitem__, default="ok")
