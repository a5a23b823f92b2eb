"""``env init``: the api, worker and web env files with strong random secrets, consistent across services.

The values come from the stack's own generator (``aixsss_ops.context.envgen``), so the files match what
``stack up`` would write for this ops.toml."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from aixsss_ops import envfile
from aixsss_ops.config import OpsConfig
from aixsss_ops.envcheck.rules import SERVICES, validate
from aixsss_ops.errors import CheckFailed, UsageError
from aixsss_ops.findings import Finding

HEADER = "written by aixsss-ops env init"


@dataclass
class InitResult:
    files: dict[str, str]
    production: bool
    kept: list[str] = field(default_factory=list)
    key_fingerprint: str = ""
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"files": self.files, "production": self.production, "kept": self.kept,
                "key_fingerprint": self.key_fingerprint, "findings": [f.to_dict() for f in self.findings]}


def init_env(cfg: OpsConfig, *, production: bool = False, force: bool = False, directory: Path | None = None,
             cors_origin: str | None = None) -> InitResult:
    """Write the three files (0600, atomic). Refuses to overwrite without ``force``; with ``force`` every
    secret is new except ``API_KEY_ENCRYPTION_KEY``, which is kept (the stored provider keys depend on it:
    changing it is ``keys rotate``'s job). In production the result must pass the production rules."""
    from aixsss_ops.context import envgen
    from aixsss_ops.context.layout import Layout
    from aixsss_ops.crypto import derive_key, fingerprint

    layout = Layout(cfg.state)
    target = directory or layout.env_dir
    paths = {svc: target / f"{svc}.env" for svc in SERVICES}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not force:
        raise UsageError(f"refusing to overwrite {', '.join(map(str, existing))}",
                         hint="pass --force to replace them (API_KEY_ENCRYPTION_KEY is kept)")
    old: dict[str, dict[str, str]] = {}
    kept = []
    for svc in ("api", "worker"):
        p = paths[svc]
        if force and p.exists():
            key = envfile.read(p).get("API_KEY_ENCRYPTION_KEY")
            if key:
                old = {"api": {"API_KEY_ENCRYPTION_KEY": key}}
                kept = ["API_KEY_ENCRYPTION_KEY"]
                break
    app = cfg.app.model_copy(update={"node_env": "production" if production else cfg.app.node_env,
                                     "cors_origin": cors_origin or cfg.app.cors_origin})
    envs = envgen.render_env_files(cfg.model_copy(update={"app": app}), layout, old)
    origins = {svc: str(p) for svc, p in paths.items()}
    findings = validate(envs, origins)
    fails = [f for f in findings if f.status == "fail"]
    if fails:
        raise CheckFailed("the generated env would not pass validation: "
                          + "; ".join(f"{f.service} {f.message}" for f in fails),
                          hint="fix ops.toml (s3.secret_key, app.cors_origin) or pass --cors-origin; nothing was written")
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    for svc, env in envs.items():
        envfile.write(paths[svc], env, HEADER)
    return InitResult({svc: str(p) for svc, p in paths.items()}, production, kept,
                      fingerprint(derive_key(envs["api"]["API_KEY_ENCRYPTION_KEY"])), findings)
