"""The step actions a playbook can call: each is a thin adapter to the use case its command calls too
(aixsss_ops.usecases), with the playbook's parameters and a check that turns a bad result into a failed step.

Importing this module is cheap (the use cases are imported inside the actions), because loading a
playbook validates every step against this registry before anything runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aixsss_ops import appspec
from aixsss_ops.errors import CheckFailed

if TYPE_CHECKING:
    from aixsss_ops.config import OpsConfig
    from aixsss_ops.context.deployment import Deployment


@dataclass(frozen=True)
class Param:
    type: Any
    default: Any = None
    required: bool = False
    help: str = ""


@dataclass(frozen=True)
class Action:
    name: str
    fn: Callable[..., dict]
    params: dict[str, Param]
    destructive: bool  # changes what the deployment serves or stores (data, schema, live release, keys); taking a
    # backup adds a restore point and changes nothing
    summary: str
    timeout: float | None = None  # default per-step timeout in seconds


REGISTRY: dict[str, Action] = {}


def action(name: str, *, destructive: bool, summary: str, default_timeout: float | None = None, **params: Param):
    def register(fn):
        REGISTRY[name] = Action(name, fn, params, destructive, summary, default_timeout)
        return fn

    return register


@dataclass
class ActionContext:
    """What an action gets besides its parameters."""

    cfg: OpsConfig
    say: Callable[[str], None]
    run_id: str = ""
    step_id: str = ""
    resumed: bool = False  # this step was started by an earlier, interrupted process
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def dep(self) -> Deployment:
        from aixsss_ops.context.deployment import Deployment

        return Deployment(self.cfg)

    @property
    def marker(self) -> str:
        """Names this step of this run (stored with what the step creates, so a re-run can find it)."""
        return f"play:{self.run_id}/{self.step_id}"

    def source(self, value: str | None) -> Path:
        return Path(value).expanduser().resolve() if value else self.cfg.app_source

    def deployer(self):
        from aixsss_ops.usecases.deploy import deployer

        return deployer(self.dep, self.say)


def jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


# -- env and checks --


@action(
    "env.validate", destructive=False,
    summary="validate the env of api, worker and web: the contract, api/worker agreement, production rules",
    strict=Param(bool, False, help="fail on warnings too"),
    environ=Param(bool, False, help="lay the process environment over the env files, as the services do"),
)
def env_validate(ctx: ActionContext, strict=False, environ=False) -> dict:
    from aixsss_ops.usecases.env import validate_env

    report = validate_env(ctx.dep, with_environ=environ)
    errors, warnings = report.errors, report.warnings
    out = report.to_dict(strict)
    bad = errors + (warnings if strict else [])
    if bad:
        raise CheckFailed(f"env invalid: {len(errors)} error(s), {len(warnings)} warning(s); first: {bad[0].message}",
                          hint=bad[0].fix, details="\n".join(f"{f.check}: {f.message}" for f in bad))
    ctx.say(f"env valid: {len(warnings)} warning(s)")
    return out


@action(
    "doctor", destructive=False, default_timeout=120.0,
    summary="run the doctor's checks as a gate: fails on any failed check (warnings pass unless strict)",
    only=Param(list[str], help="check names or groups to run"),
    skip=Param(list[str], help="check names or groups to leave out"),
    check_timeout=Param(float, 3.0, help="seconds each check may take"),
    strict=Param(bool, False, help="fail on warnings too"),
)
def doctor(ctx: ActionContext, only=None, skip=None, check_timeout=3.0, strict=False) -> dict:
    from aixsss_ops.usecases.doctor import run_doctor

    report = run_doctor(ctx.dep, only, skip, check_timeout)
    bad = [f for f in report.findings if f.status == "fail" or (strict and f.status == "warn")]
    if bad:
        raise CheckFailed(f"doctor: {len(bad)} finding(s); first: {bad[0].check}: {bad[0].message}", hint=bad[0].fix,
                          details="\n".join(f"{f.check} [{f.status}]: {f.message}" for f in bad))
    n = report.counts
    ctx.say(f"doctor: {n['ok']} ok, {n['warn']} warning(s), {n['skipped']} skipped")
    return report.to_dict()


# -- deploy --


@action("deploy.status", destructive=False, summary="record the live color and release (e.g. to roll back to it)")
def deploy_status(ctx: ActionContext) -> dict:
    from aixsss_ops.usecases.deploy import live

    return live(ctx.dep)


@action(
    "deploy", destructive=True, default_timeout=1800.0,
    summary="blue/green deploy of a release: build, migrate, boot the idle color, health gate, switch",
    version=Param(str, help="release version (default app.version)"),
    source=Param(str, help="app source folder (default app.source)"),
    allow_destructive=Param(bool, False, help="apply migrations that lint flags"),
    force=Param(bool, False, help="redeploy even when this release is live"),
)
def deploy(ctx: ActionContext, version=None, source=None, allow_destructive=False, force=False) -> dict:
    res = ctx.deployer().deploy(version=version or None, source=ctx.source(source) if source else None,
                                allow_destructive=allow_destructive, force=force, actor=f"play {ctx.run_id}")
    return res.to_dict()


@action(
    "rollback", destructive=True, default_timeout=900.0,
    summary="make a release live again (default: the previous one); nothing to do when it already is",
    to=Param(str, help="release id to go back to"),
)
def rollback(ctx: ActionContext, to=None) -> dict:
    if to:
        live = deploy_status(ctx)
        if live["release"] == to:
            ctx.say(f"{to} is live on {live['color']}: nothing to roll back")
            return {"noop": True, "release": to, "color": live["color"]}
    res = ctx.deployer().rollback(to or None, actor=f"play {ctx.run_id}")
    return {"noop": False, **res.to_dict()}


@action(
    "smoke", destructive=False, default_timeout=180.0,
    summary="end-to-end check through the proxy: health, ready, a job processed by the worker, its artifact",
    url=Param(str, help="base URL (default: the stack's proxy)"),
    job_timeout=Param(float, 60.0, help="seconds the smoke job may take"),
    expect_version=Param(str, help="fail unless this version answers"),
)
def smoke(ctx: ActionContext, url=None, job_timeout=60.0, expect_version=None) -> dict:
    from aixsss_ops.usecases.stack import smoke as run_smoke

    res = run_smoke(ctx.dep, job_timeout, url or None)
    if expect_version and res.version != expect_version:
        raise CheckFailed(f"smoke: {res.url} answers version {res.version}, expected {expect_version}")
    ctx.say(f"smoke ok: {res.color} {res.version}, job {res.job_id} {res.job_status}")
    return jsonable(res)


# -- migrations --


def _migrations_dir(ctx: ActionContext, source: str | None) -> Path:
    return appspec.migrations_dir(ctx.cfg, ctx.source(source))


def _database_url(ctx: ActionContext) -> str:
    from aixsss_ops.usecases.migrate import database_url

    return database_url(ctx.dep)


@action(
    "migrate.lint", destructive=False,
    summary="lint the migrations for statements that break the running color or lose data",
    source=Param(str, help="app source folder whose migrations/ is linted (default app.source)"),
    allow_destructive=Param(bool, False, help="report errors without failing"),
)
def migrate_lint(ctx: ActionContext, source=None, allow_destructive=False) -> dict:
    from aixsss_ops.migrate.layout import read_layout
    from aixsss_ops.migrate.lint import blocking, lint

    layout = read_layout(_migrations_dir(ctx, source))
    findings = lint(layout.migrations)
    errors = blocking(findings)
    out = {"migrations": len(layout.migrations), "errors": len(errors), "warnings": len(findings) - len(errors),
           "findings": [f.to_dict() for f in findings]}
    if errors and not allow_destructive:
        first = errors[0]
        raise CheckFailed(f"migrate lint: {len(errors)} error(s); first: {first.migration}:{first.line}: {first.message}",
                          hint="review `aixsss-ops migrate lint`; pass allow_destructive to go ahead",
                          details="\n".join(f"{f.migration}:{f.line}: [{f.rule}] {f.message}" for f in errors))
    ctx.say(f"lint: {out['migrations']} migrations, {out['errors']} error(s), {out['warnings']} warning(s)")
    return out


@action(
    "migrate.status", destructive=False,
    summary="migration status; fails on failed, modified or missing migrations (and on pending ones if asked)",
    source=Param(str, help="app source folder (default app.source)"),
    allow_pending=Param(bool, True, help="pending migrations are not a failure"),
)
def migrate_status(ctx: ActionContext, source=None, allow_pending=True) -> dict:
    from aixsss_ops.migrate import status

    rep = status(_database_url(ctx), _migrations_dir(ctx, source))
    d = rep.to_dict()
    bad = [n for s in ("failed", "interrupted", "modified", "missing") for n in d.get(s, [])]
    if not allow_pending:
        bad += d.get("pending", [])
    if bad or rep.needs_baseline:
        raise CheckFailed(f"migrate status: not up to date ({', '.join(bad) or 'needs a baseline'})")
    return d


@action(
    "migrate.deploy", destructive=True, default_timeout=3600.0,
    summary="apply pending migrations in order under Prisma's advisory lock",
    source=Param(str, help="app source folder whose migrations/ is applied (default app.source)"),
    allow_destructive=Param(bool, False, help="apply statements that lint flags"),
)
def migrate_deploy(ctx: ActionContext, source=None, allow_destructive=False) -> dict:
    from aixsss_ops.migrate import deploy as run

    res = run(_database_url(ctx), _migrations_dir(ctx, source), allow_destructive=allow_destructive, progress=ctx.say)
    ctx.say(f"applied {len(res.applied)} migration(s)" if res.applied else "no pending migrations")
    return res.to_dict()


# -- backups --


def _backups():
    from aixsss_ops.usecases import backup

    return backup


class _Phases:
    def __init__(self, say):
        self.phase = say
        self.warn = lambda m: say(f"warning: {m}")

    def dumped(self, nbytes, total):
        pass

    def table(self, done, total, name):
        pass


@action(
    "backup.create", destructive=False, default_timeout=7200.0,
    summary="take one restore point: Postgres dump + per-table checksums + the object manifest",
    label=Param(str, help="a label shown by `backup list` (the run and step are appended)"),
    keep=Param(bool, False, help="never pruned"),
    objects=Param(bool, True, help="include the object store"),
)
def backup_create(ctx: ActionContext, label=None, keep=False, objects=True) -> dict:
    cat = _backups().catalog(ctx.dep)
    if ctx.resumed:  # the interrupted process may have finished the backup before it could record it
        done = [e for e in cat.complete() if ctx.marker in ((e.manifest or {}).get("label") or "")]
        if done:
            ctx.say(f"backup {done[-1].id} of this step was completed before the interruption: using it")
            return {"id": done[-1].id, "adopted": True, **done[-1].summary()}
    res = _backups().create(ctx.dep, label=f"{label + ' ' if label else ''}[{ctx.marker}]", keep=keep,
                            with_objects=objects, reporter=_Phases(ctx.say))
    ctx.say(f"backup {res.id} complete")
    return res.to_dict()


@action(
    "backup.latest", destructive=False,
    summary="the newest complete backup (fails when there is none, or it is older than max_age_hours)",
    max_age_hours=Param(float, 0.0, help="0 = any age"),
)
def backup_latest(ctx: ActionContext, max_age_hours=0.0) -> dict:
    from aixsss_ops.backup.manifest import parse_iso, utcnow

    entry = _backups().catalog(ctx.dep).get("latest")
    age = (utcnow() - parse_iso(entry.created_at)).total_seconds() / 3600
    if max_age_hours and age > max_age_hours:
        raise CheckFailed(f"the newest backup {entry.id} is {age:.1f}h old (limit {max_age_hours:g}h)")
    ctx.say(f"newest backup: {entry.id} ({age:.1f}h old)")
    return {**entry.summary(), "age_hours": round(age, 3)}


@action(
    "backup.verify", destructive=False, default_timeout=7200.0,
    summary="check a backup's checksums; with restore, restore it into a scratch database and compare every table",
    id=Param(str, "latest", help="backup id or 'latest'"),
    restore=Param(bool, False, help="restore into a scratch database (dropped after) and compare"),
)
def backup_verify(ctx: ActionContext, id="latest", restore=False) -> dict:  # noqa: A002 - the playbook's name
    cat = _backups().catalog(ctx.dep)
    entry = cat.get(id or "latest")
    res = _backups().verify(ctx.dep, cat, entry, restore=restore, say=ctx.say)
    if not res.ok:
        raise CheckFailed(f"backup {entry.id} failed verification: {res.problems[0]}", details="\n".join(res.problems))
    ctx.say(f"backup {entry.id} verified" + (f": {res.tables_compared} tables compared after a restore" if restore else ""))
    return res.to_dict()


@action(
    "backup.restore", destructive=True, default_timeout=7200.0,
    summary="restore a backup: the live database (the old one is kept) and objects, or a new database (target_db)",
    id=Param(str, "latest", help="backup id or 'latest'"),
    target_db=Param(str, help="restore into this new database instead of the live one (objects are left alone)"),
    db_only=Param(bool, False, help="leave the objects alone"),
    force=Param(bool, False, help="restore a schema newer than the known migrations"),
)
def backup_restore(ctx: ActionContext, id="latest", target_db=None, db_only=False, force=False) -> dict:  # noqa: A002
    b = _backups()
    req = b.RestoreRequest(db_only=db_only or bool(target_db), target_db=target_db, force=force)
    return b.restore(ctx.dep, id, req, say=ctx.say)


# -- provider-key encryption key --


@action(
    "keys.check", destructive=False, default_timeout=600.0,
    summary="every stored provider key decrypts with the configured key; api and worker agree; no rotation unfinished",
)
def keys_check(ctx: ActionContext) -> dict:
    from aixsss_ops.keys.service import check

    res = check(ctx.dep)
    if not res["ok"]:
        raise CheckFailed(f"keys: {res['findings'][0]}", details="\n".join(res["findings"][1:]) or None)
    ctx.say(f"keys: {res['values']} value(s), all decrypt with key {res['key_fingerprint']}")
    return res


@action(
    "keys.rotate", destructive=True, default_timeout=7200.0,
    summary="re-encrypt every provider key with a new key, write the env files, blue/green restart (resumable)",
    new_key_env=Param(str, help="name of an environment variable holding the new key (default: generate one)"),
    rollback=Param(bool, False, help="go back to the kept previous key instead"),
    drain_timeout=Param(float, 120.0, help="seconds to wait for active jobs"),
    batch_size=Param(int, help="rows per transaction"),
)
def keys_rotate(ctx: ActionContext, new_key_env=None, rollback=False, drain_timeout=120.0, batch_size=None) -> dict:
    import signal

    from aixsss_ops.keys.service import RotateOptions
    from aixsss_ops.output import scrubber
    from aixsss_ops.usecases import keys

    new_key = None
    if new_key_env and not rollback:
        new_key = os.environ.get(new_key_env)
        if not new_key:
            raise CheckFailed(f"${new_key_env} (the new key) is not set")
        scrubber.add(new_key)

    def interrupt(_signum, _frame):  # a step timeout stops the rotation the way Ctrl-C does: it reverts cleanly
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    opts = RotateOptions(new_key=new_key, generate=not new_key and not rollback, rollback=rollback,
                         drain_timeout=drain_timeout, batch=batch_size)
    res = keys.rotate(keys.prepare_rotation(ctx.dep, opts, say=ctx.say))
    ctx.say(f"keys: {res.phase}, {res.old_fingerprint} -> {res.new_fingerprint}, {res.reencrypted} re-encrypted")
    return res.to_dict()


def reference_table() -> str:
    """The action table of docs/playbooks.md (a test keeps the two in sync)."""

    def type_name(t) -> str:
        return "list of str" if str(t).startswith("list") else getattr(t, "__name__", str(t))

    rows = ["| action | changes things | default timeout | what it does | parameters |", "|---|---|---|---|---|"]
    for name in sorted(REGISTRY):
        a = REGISTRY[name]
        params = "; ".join(
            f"`{k}` ({type_name(p.type)}{'' if p.default is None else f', default {p.default!r}'}"
            f"{', required' if p.required else ''}): {p.help}" for k, p in a.params.items()) or "—"
        timeout = "" if a.timeout is None else f"{a.timeout:g}s"
        rows.append(f"| `{name}` | {'yes' if a.destructive else 'no'} | {timeout} | {a.summary} | {params} |")
    return "\n".join(rows) + "\n"
