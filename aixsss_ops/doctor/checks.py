"""Doctor's checks: each a small function of a :class:`Context` returning one finding (or a few).

A check that needs a dependency declares it in the registry (``aixsss_ops.doctor.registry``); when the
dependency's reachability check failed, the runner reports it as skipped instead of failing it again.
Checks raise nothing on purpose: an unexpected exception is turned into a failed finding by the runner.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from aixsss_ops.doctor.context import Context
from aixsss_ops.findings import Finding
from aixsss_ops.output import mask_url

STACK_UP = "start it: `aixsss-ops stack up` (or check the service and its URL)"
_URL_OF = {"postgres": "DATABASE_URL", "redis": "REDIS_URL", "s3": "S3_ENDPOINT / S3_ACCESS_KEY / S3_SECRET_KEY"}


def bring_up(ctx: Context, service: str) -> str:
    """What to do about a service that does not answer: start the embedded one; a managed one is not ours to
    start."""
    if getattr(ctx.cfg, service).external:
        return (f"check the managed service and what names it ({_URL_OF[service]} in the env files; "
                "`aixsss-ops stack up` with the right value in its environment writes it)")
    return STACK_UP


# -- configuration and env --
def env_rules(ctx: Context) -> list[Finding]:
    from aixsss_ops.envcheck.rules import validate

    src = ctx.env_sources
    if not src.envs and not src.problems:
        return [Finding("env", "fail", f"no env files in {ctx.cfg.state / 'env'} and no DATABASE_URL in the environment",
                        "write them with `aixsss-ops env init` (or `aixsss-ops stack up`)")]
    own = any(p.exists() for p in ctx.env_files.values())  # the stack's env files: ops.toml's queue is theirs
    found = src.problems + validate(src.envs, src.origins, queue=ctx.cfg.app.queue if own else None)
    if not found:
        return [Finding("env", "ok", f"{', '.join(src.envs)} env valid ({'; '.join(sorted(set(src.origins.values())))})")]
    return found


def clock_skew(ctx: Context) -> Finding:
    name = "config.clock-skew"
    with _pg(ctx) as conn:
        t0 = time.time()
        db = float(conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])
        t1 = time.time()
    skew = db - (t0 + t1) / 2
    msg = f"this host's clock is {abs(skew):.2f}s {'behind' if skew > 0 else 'ahead of'} PostgreSQL's"
    fix = "synchronise the clocks (chrony/systemd-timesyncd): backups and job ages rely on them"
    if abs(skew) > 60:
        return Finding(name, "fail", msg, fix)
    if abs(skew) > 2:
        return Finding(name, "warn", msg, fix)
    return Finding(name, "ok", f"clock within {abs(skew):.2f}s of PostgreSQL")


# -- postgres --
def _pg(ctx: Context):
    from aixsss_ops.dburl import parse_database_url

    return parse_database_url(ctx.database_url, "DATABASE_URL").connect(timeout=ctx.net_timeout)


def postgres_reachable(ctx: Context) -> Finding:
    from aixsss_ops.dburl import parse_database_url
    from aixsss_ops.errors import OpsError

    name = "postgres.reachable"
    if not ctx.database_url:
        return Finding(name, "fail", "no DATABASE_URL (environment, api.env) and no embedded stack",
                       "set DATABASE_URL or write the env files with `aixsss-ops env init`")
    target = parse_database_url(ctx.database_url, "DATABASE_URL")
    try:
        with target.connect(timeout=ctx.net_timeout) as conn:
            num = int(conn.execute("SHOW server_version_num").fetchone()[0])
            version = conn.execute("SHOW server_version").fetchone()[0]
    except OpsError as e:
        return Finding(name, "fail", " ".join(e.message.split()),
                       f"PostgreSQL is down or unreachable: {bring_up(ctx, 'postgres')}")
    where = f"PostgreSQL {version.split()[0]} at {target.masked}"
    if num < 130000:
        return Finding(name, "warn", f"{where}: versions before 13 are out of support", "upgrade to PostgreSQL 16")
    return Finding(name, "ok", where)


def postgres_connections(ctx: Context) -> Finding:
    name = "postgres.connections"
    with _pg(ctx) as conn:
        used = int(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
                   .fetchone()[0])
        limit = int(conn.execute("SHOW max_connections").fetchone()[0])
        reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])
    avail = max(1, limit - reserved)
    msg = f"{used} of {avail} connections in use (max_connections {limit}, {reserved} reserved)"
    fix = "raise max_connections, lower the pools (connection_limit= in DATABASE_URL) or add PgBouncer"
    if used >= 0.95 * avail:
        return Finding(name, "fail", msg, fix)
    if used >= 0.8 * avail:
        return Finding(name, "warn", msg, fix)
    return Finding(name, "ok", msg)


def migrations(ctx: Context) -> Finding:
    from aixsss_ops.migrate import status

    name = "postgres.migrations"
    folder = ctx.migrations()
    if not folder.is_dir():
        return Finding(name, "skipped", f"no migrations folder at {folder}", "pass --migrations-dir")
    r = status(ctx.database_url, folder)
    c = r.counts
    if r.ok:
        note = f"; the migration lock is held by {r.lock_holder}" if r.lock_holder else ""
        return Finding(name, "ok", f"{c['applied']} migration(s) applied, none pending{note}")
    if r.needs_baseline:
        return Finding(name, "fail", f"the schema has {len(r.unmanaged_tables)} table(s) but no _prisma_migrations ledger",
                       "record the existing schema with `aixsss-ops migrate baseline`")
    parts = [f"{n} {s}" for s, n in c.items() if n and s != "applied"]
    bad = {s: r.names(s)[:3] for s in ("failed", "interrupted", "modified", "missing") if r.names(s)}
    detail = "; ".join(f"{s}: {', '.join(v)}" for s, v in bad.items()) or f"pending: {', '.join(r.names('pending')[:3])}"
    fix = ("apply them: `aixsss-ops migrate deploy`" if not bad else
           "see `aixsss-ops migrate status`; fix the migration and `aixsss-ops migrate resolve`")
    return Finding(name, "fail", f"{', '.join(parts)} ({detail})", fix)


def provider_keys(ctx: Context) -> Finding:
    """A sample of stored provider keys must decrypt with the api's and the worker's key."""
    import psycopg

    from aixsss_ops.crypto import CryptoError, decrypt, derive_key, fingerprint

    name = "keys.decrypt"
    raw = ctx.encryption_keys()
    if not raw:
        return Finding(name, "skipped", "no API_KEY_ENCRYPTION_KEY in the environment or the env files",
                       "set API_KEY_ENCRYPTION_KEY for the api and the worker")
    keys = {svc: derive_key(v) for svc, v in raw.items()}
    with _pg(ctx) as conn:
        try:
            rows = conn.execute(
                'SELECT "apiKeyEncrypted", "imageApiKeyEncrypted", "videoApiKeyEncrypted" FROM "AIProfile" '
                "ORDER BY random() LIMIT 20").fetchall()
        except psycopg.errors.UndefinedTable:
            return Finding(name, "skipped", 'no "AIProfile" table yet', "apply the migrations: `aixsss-ops migrate deploy`")
    payloads = [p for row in rows for p in row if p]
    fps = ", ".join(f"{svc} {fingerprint(k)}" for svc, k in keys.items())
    if not payloads:
        return Finding(name, "ok", f"no stored provider keys to check (key {fps})")
    bad = {}
    for svc, key in keys.items():
        n = 0
        for p in payloads:
            try:
                decrypt(p, key)
            except CryptoError:
                n += 1
        if n:
            bad[svc] = n
    if bad:
        who = ", ".join(f"{n} of {len(payloads)} with the {svc}'s key" for svc, n in bad.items())
        return Finding(name, "fail", f"sampled provider keys do not decrypt: {who} (key {fps})",
                       "the services run with another API_KEY_ENCRYPTION_KEY than the one that encrypted the keys: "
                       "restore the previous key in api.env and worker.env (or finish the rotation: `aixsss-ops keys`)")
    return Finding(name, "ok", f"{len(payloads)} sampled provider key(s) decrypt with the configured key ({fps})")


# -- redis and the queue --
def _redis(ctx: Context):
    from aixsss_ops.queue.conn import connect

    return connect(ctx.redis.redis_url, ctx.net_timeout)


def redis_reachable(ctx: Context) -> Finding:
    from aixsss_ops.errors import OpsError

    name = "redis.reachable"
    url = mask_url(ctx.redis.redis_url)
    try:
        with _redis(ctx) as r:
            version = r.info("server").get("redis_version", "?")
    except OpsError as e:
        return Finding(name, "fail", e.message, f"Redis is down or unreachable: {bring_up(ctx, 'redis')}")
    major_minor = tuple(int(x) for x in str(version).split(".")[:2] if x.isdigit())
    if major_minor and major_minor < (6, 2):
        return Finding(name, "warn", f"Redis {version} at {url}: BullMQ 5 needs 6.2 or later", "upgrade Redis to 7")
    return Finding(name, "ok", f"Redis {version} at {url}")


def _config_get(r, param: str) -> str | None:
    import redis

    try:
        return r.config_get(param).get(param)
    except redis.ResponseError:
        return None


def redis_policy(ctx: Context) -> Finding:
    from aixsss_ops.queue.checks import check_maxmemory_policy

    with _redis(ctx) as r:
        return check_maxmemory_policy(_config_get(r, "maxmemory-policy"))


def redis_persistence(ctx: Context) -> Finding:
    from aixsss_ops.queue.checks import check_persistence

    with _redis(ctx) as r:
        return check_persistence(_config_get(r, "appendonly"), _config_get(r, "save"))


def redis_memory(ctx: Context) -> Finding:
    name = "redis.memory"
    with _redis(ctx) as r:
        info = r.info("memory")
    used, ceiling = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    mb = 1024 * 1024
    if not ceiling:
        return Finding(name, "warn", f"{used / mb:.1f} MB used and no memory ceiling (maxmemory 0)",
                       "set maxmemory (with maxmemory-policy noeviction) so Redis fails writes instead of the host "
                       "running out of memory")
    msg = f"{used / mb:.1f} MB used of {ceiling / mb:.0f} MB ({used / ceiling:.0%})"
    fix = "raise maxmemory, or clean finished jobs: `aixsss-ops queue clean`"
    if used >= 0.95 * ceiling:
        return Finding(name, "fail", msg + ": with noeviction new jobs are refused at the ceiling", fix)
    if used >= 0.8 * ceiling:
        return Finding(name, "warn", msg, fix)
    return Finding(name, "ok", msg)


def queue_name_match(ctx: Context) -> Finding:
    from aixsss_ops.queue.checks import check_queue_name_match

    envs = {svc: env for svc, env in ctx.envs.items() if svc in ("api", "worker")}
    if ctx.environ.get("AI_QUEUE_NAME"):
        envs = {svc: {**env, "AI_QUEUE_NAME": ctx.environ["AI_QUEUE_NAME"]} for svc, env in envs.items()}
    return check_queue_name_match(envs)


def queue_jobs(ctx: Context) -> list[Finding]:
    from aixsss_ops.queue.checks import check_failed_rising, check_oldest_waiting, check_workers_present
    from aixsss_ops.queue.inspect import read_stats
    from aixsss_ops.queue.workers import read_workers

    q = ctx.redis.queue
    out = []
    with _redis(ctx) as r:
        st = read_stats(r, q)
        try:
            out.append(check_workers_present(st, len(read_workers(r, q))))
        except Exception as e:  # CLIENT LIST disabled (managed Redis): say so instead of guessing
            out.append(Finding("queue.workers", "warn", f"cannot list workers: {e}"))
    return [*out, check_oldest_waiting(st), check_failed_rising(st)]


# -- object store --
def s3_reachable(ctx: Context) -> Finding:
    from aixsss_ops import probes

    name = "s3.reachable"
    t = ctx.s3
    ok, detail = probes.http(t.endpoint.rstrip("/") + "/", timeout=ctx.net_timeout, expect_any_status=True)
    if not ok:
        return Finding(name, "fail", f"object store at {t.endpoint} is unreachable: {detail}",
                       f"the S3/MinIO store is down: {bring_up(ctx, 's3')}")
    return Finding(name, "ok", f"object store at {t.endpoint} answers ({detail})")


def _s3_call(ctx: Context, fn):
    from minio.error import S3Error

    c = ctx.s3.client(timeout=ctx.net_timeout)
    try:
        return fn(c), None
    except S3Error as e:
        return None, f"{e.code}: {e.message}"


def s3_bucket(ctx: Context) -> Finding:
    name = "s3.bucket"
    exists, err = _s3_call(ctx, lambda c: c.bucket_exists(ctx.bucket))
    if err:
        return Finding(name, "fail", f"bucket {ctx.bucket}: {err}", "check S3_ACCESS_KEY / S3_SECRET_KEY and the policy")
    if not exists:
        return Finding(name, "fail", f"bucket {ctx.bucket} does not exist",
                       "create it: `aixsss-ops stack up` (embedded) or `mc mb` on the store")
    return Finding(name, "ok", f"bucket {ctx.bucket} exists")


def s3_versioning(ctx: Context) -> Finding:
    name = "s3.versioning"
    cfg, err = _s3_call(ctx, lambda c: c.get_bucket_versioning(ctx.bucket))
    if err:
        return Finding(name, "fail", f"cannot read the versioning of {ctx.bucket}: {err}")
    if cfg.status != "Enabled":
        return Finding(name, "warn", f"versioning is {cfg.status or 'off'} on {ctx.bucket}: backups cannot bring "
                       "objects back", "run `aixsss-ops backup create` (it enables versioning) or enable it on the bucket")
    return Finding(name, "ok", f"versioning enabled on {ctx.bucket}")


def s3_lifecycle(ctx: Context) -> Finding:
    from aixsss_ops.backup.objects import lifecycle_warnings
    from aixsss_ops.backup.prune import Policy

    name = "s3.lifecycle"
    b = ctx.cfg.backup
    days = Policy(b.keep_last, b.keep_daily, b.keep_weekly).horizon_days
    warnings, _ = lifecycle_warnings(ctx.s3, ctx.bucket, days)
    if warnings:
        return Finding(name, "warn", "; ".join(warnings),
                       f"make noncurrent versions live at least {days} days (or shorten backup.keep_*)")
    return Finding(name, "ok", f"no lifecycle rule expires noncurrent versions before the {days}-day backup horizon")


# -- backups --
def _age(iso: str) -> float:
    from aixsss_ops.backup.manifest import parse_iso

    return (datetime.now(UTC) - parse_iso(iso)).total_seconds()


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def backup_newest(ctx: Context) -> Finding:
    from aixsss_ops.backup.location import catalog

    name = "backup.newest"
    rpo = ctx.cfg.backup.rpo_hours
    cat = catalog(ctx.dep)
    entries = cat.entries()
    complete = [e for e in entries if e.status == "complete"]
    leftovers = [e.id for e in entries if e.status in ("incomplete", "invalid", "mismatched")]
    extra = f"; {len(leftovers)} incomplete/invalid/mismatched: {', '.join(leftovers[:3])}" if leftovers else ""
    if not complete:
        return Finding(name, "fail", f"no complete backup in {cat.location}{extra}",
                       "take one: `aixsss-ops backup create` (and schedule it)")
    newest = complete[-1]
    age = _age(newest.created_at)
    msg = f"newest complete backup {newest.id} is {_hours(age)} old (RPO {rpo:g} h){extra}"
    if age > rpo * 3600:
        return Finding(name, "fail", msg, "take one now (`aixsss-ops backup create`) and check the schedule")
    return Finding(name, "warn" if leftovers else "ok", msg,
                   "`aixsss-ops backup prune` removes the remains" if leftovers else None)


def backup_scratch(ctx: Context) -> Finding:
    """Scratch databases (full copies) whose restore or verify was killed: nothing else would ever drop them."""
    from aixsss_ops.backup.postgres import admin_target
    from aixsss_ops.backup.scratch import orphans
    from aixsss_ops.dburl import parse_database_url

    name = "backup.scratch"
    if not ctx.database_url:
        return Finding(name, "skipped", "no database configured")
    left = orphans(admin_target(parse_database_url(ctx.database_url)))
    if left:
        return Finding(name, "fail", f"{len(left)} scratch database(s) of killed restores/verifies take space: "
                       f"{', '.join(left[:3])}", "`aixsss-ops backup cleanup` drops them")
    return Finding(name, "ok", "no scratch database left by a killed restore or verify")


def backup_verified(ctx: Context) -> Finding:
    from aixsss_ops.backup.location import catalog

    name = "backup.verified"
    complete = catalog(ctx.dep).complete()
    fix = "verify the newest: `aixsss-ops backup verify latest --restore`"
    if not complete:
        return Finding(name, "skipped", "no complete backup to verify", fix)
    failed = [e for e in complete if (e.meta.get("verify") or {}).get("ok") is False]
    if failed and failed[-1] is complete[-1]:
        return Finding(name, "fail", f"the newest backup {complete[-1].id} failed its last verification", fix)
    verified = [e for e in complete if e.verified_ok]
    if not verified:
        return Finding(name, "warn", f"none of the {len(complete)} complete backup(s) has been verified", fix)
    e = verified[-1]
    at = (e.meta.get("verify") or {}).get("at") or e.created_at
    age = _age(at)
    msg = f"newest verified backup {e.id}, verified {_hours(age)} ago"
    if age > ctx.cfg.backup.verify_max_age_days * 86400:
        return Finding(name, "warn", msg + f" (more than {ctx.cfg.backup.verify_max_age_days:g} days)", fix)
    return Finding(name, "ok", msg)


# -- deploy --
def _no_stack(name: str, ctx: Context) -> Finding | None:
    if not ctx.has_stack:
        return Finding(name, "skipped", f"no embedded stack state in {ctx.cfg.state}")
    return None


def deploy_proxy(ctx: Context) -> Finding:
    from aixsss_ops import probes

    name = "deploy.active"
    if (f := _no_stack(name, ctx)) is not None:
        return f
    live = ctx.stack.live_color()
    ok, body = probes.api_health(ctx.stack.url + "/api/health", timeout=ctx.net_timeout)
    if not ok:
        return Finding(name, "fail", f"/api/health through the proxy {ctx.stack.url} failed: {body}",
                       "check `aixsss-ops stack status` and the api's logs (`aixsss-ops stack logs api-" + f"{live})`")
    if live and body.get("color") not in (None, live):
        return Finding(name, "fail", f"the proxy points at {live} but {body.get('color')} answered",
                       "re-point it: `aixsss-ops deploy switch " + f"{live}`")
    return Finding(name, "ok", f"the active color {live} answers through the proxy (version {body.get('version')})")


def deploy_state(ctx: Context) -> list[Finding]:
    """Active/intended color agreement, the idle color's state and the deploy lock (``Deployer.status``)."""
    from aixsss_ops.deploy.engine import Deployer

    if (f := _no_stack("deploy.idle-color", ctx)) is not None:
        return [f]
    if not ctx.dep.deploy_state.load():
        return [Finding("deploy.idle-color", "skipped", "no deploy state yet (the stack was never brought up)")]
    if (problem := ctx.stack.engine_problem()) is not None:
        return [Finding("deploy.idle-color", "fail", problem, "`aixsss-ops stack up`")]
    st = Deployer(ctx.stack).status(recover=False)
    out = []
    for color in st["interrupted"]:
        spec = st["colors"][color]
        out.append(Finding("deploy.interrupted", "fail", f"a deploy of {spec['release']} to {color} was killed before "
                           f"its health gate passed; {color} still runs that unchecked release",
                           "`aixsss-ops deploy status` stops it (or `aixsss-ops deploy` again)"))
    if not st["consistent"]:
        out.append(Finding("deploy.consistent", "warn", f"the proxy serves {st['proxy_target']} but the deploy state says "
                           f"{st['intended_active']} (an interrupted switch?)",
                           f"`aixsss-ops deploy switch {st['proxy_target']}` to record it, or switch back"))
    idle = [c for c in st["colors"] if c != st["proxy_target"]]
    if not idle:
        out.append(Finding("deploy.idle-color", "ok", "no idle color (nothing to roll back to yet)"))
    for color in idle:
        svc = st["colors"][color]["services"]
        states = ", ".join(f"{role} {s['state']}" for role, s in svc.items())
        rel = st["colors"][color].get("version")
        if any(s["state"] in ("FATAL", "BACKOFF") for s in svc.values()):
            out.append(Finding("deploy.idle-color", "warn", f"idle color {color} ({rel}) crashed: {states}",
                               f"look at `aixsss-ops stack logs api-{color}`; a rollback to it would fail"))
        elif svc["api"]["state"] == "RUNNING" and svc["api"].get("healthy") is False:
            out.append(Finding("deploy.idle-color", "warn", f"idle color {color} ({rel}) runs but fails its readiness check",
                               f"look at `aixsss-ops stack logs api-{color}`"))
        else:
            warm = "warm for an instant rollback" if svc["api"]["state"] == "RUNNING" else "stopped"
            out.append(Finding("deploy.idle-color", "ok", f"idle color {color} ({rel}): {states} ({warm})"))
    lock = st["lock"]
    if lock["held"]:
        h = lock["holder"] or {}
        out.append(Finding("deploy.lock", "warn", f"a {h.get('action', 'deploy')} holds the lock: pid {h.get('pid')} "
                           f"since {h.get('since')}", "wait for it (`aixsss-ops deploy lock status`)"))
    elif lock["stale_note"]:
        from aixsss_ops.deploy.lock import DeployLock
        from aixsss_ops.fsutil import read_json

        note = read_json(DeployLock(ctx.dep.layout.deploy_dir).note) or {}  # the holder that died: its action
        out.append(Finding("deploy.lock", "warn", f"a killed {note.get('action', 'deploy')} left its lock note behind "
                           "(the lock itself is free)", "clear it: `aixsss-ops deploy lock release`"))
    else:
        out.append(Finding("deploy.lock", "ok", "no deploy in progress, no stale lock"))
    return out


def api_bind(ctx: Context) -> list[Finding]:
    """An api that listens on every interface whatever ``host`` says (the real AIXSSS binds 0.0.0.0): reachable
    from the network around the proxy unless a firewall stops it."""
    from aixsss_ops.probes import listening_on_every_interface
    from aixsss_ops.runtime.base import api_port

    name = "deploy.api-bind"
    if (f := _no_stack(name, ctx)) is not None:
        return [f]
    if ctx.cfg.runtime != "local":
        return [Finding(name, "ok", f"the docker runtime publishes the api ports on {ctx.cfg.host} only")]
    out = []
    for color in ("blue", "green"):
        port = api_port(ctx.cfg, color)
        if listening_on_every_interface(port):
            out.append(Finding(name, "warn", f"api-{color} listens on every interface (0.0.0.0:{port}), not only on "
                               f"{ctx.cfg.host}: it is reachable around the proxy",
                               f"firewall it, e.g. `iptables -A INPUT -p tcp --dport {port} ! -i lo -j DROP`, or make "
                               "the app bind its HOST"))
    return out or [Finding(name, "ok", f"no api listens beyond {ctx.cfg.host}")]


def proxy_config(ctx: Context) -> Finding:
    name = "deploy.proxy-config"
    if (f := _no_stack(name, ctx)) is not None:
        return f
    ok, message, fix = ctx.stack.proxy_config_check()
    return Finding(name, "ok", message) if ok else Finding(name, "fail", message, fix)


# -- host --
def _existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def host_disk(ctx: Context) -> list[Finding]:
    out = []
    seen = set()
    for label, path in (("state", ctx.cfg.state), ("backup", ctx.cfg.backup_dir)):
        p = _existing(path)
        with contextlib.suppress(OSError):
            dev = p.stat().st_dev
            if dev in seen:
                continue
            seen.add(dev)
        u = shutil.disk_usage(p)
        msg = f"{u.free / 1024 ** 3:.1f} GB free ({u.free / u.total:.0%}) on the {label} directory's filesystem ({path})"
        fix = "free space (`aixsss-ops backup prune`, old logs) or grow the volume"
        name = f"host.disk-{label}"
        level = disk_level(u.free, u.total)
        out.append(Finding(name, level, msg, None if level == "ok" else fix))
    return out


def disk_level(free: int, total: int) -> str:
    """fail under 0.5 GB (or 5% when that is also under 5 GB), warn under 2 GB (or 15% when also under 20 GB):
    a percentage alone would call tens of free gigabytes on a large volume a problem."""
    gb = 1024 ** 3
    if free < 0.5 * gb or (free < 0.05 * total and free < 5 * gb):
        return "fail"
    if free < 2 * gb or (free < 0.15 * total and free < 20 * gb):
        return "warn"
    return "ok"
