"""Glue between the configuration and the key engine: which keys, which files, which queue, which runtime.

Connection settings and keys come from the ``Deployment`` (flag, process environment, env files, ops.toml;
see :mod:`aixsss_ops.context.settings`). Every raw key seen is registered with the output scrubber at once, so no
message can show it; results carry fingerprints only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aixsss_ops import envfile
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.context.settings import SERVICES, Setting
from aixsss_ops.crypto import derive_key, fingerprint, generate_key
from aixsss_ops.errors import CheckFailed, UsageError
from aixsss_ops.output import scrubber

if TYPE_CHECKING:
    from aixsss_ops.keys.rotate import Rotation

KEY = "API_KEY_ENCRYPTION_KEY"
PREVIOUS = "API_KEY_ENCRYPTION_KEY_PREVIOUS"
NEXT = "API_KEY_ENCRYPTION_KEY_NEXT"
MIN_LENGTH = 32


@dataclass(frozen=True)
class Key:
    raw: str
    source: str

    @property
    def derived(self) -> bytes:
        return derive_key(self.raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.derived)

    def __repr__(self) -> str:  # never the raw key
        return f"Key(fingerprint={self.fingerprint}, source={self.source!r})"


def key(raw: str, source: str) -> Key:
    """A key from ``source``; shorter than the contract's 32 characters is a failed precondition (exit 3)."""
    scrubber.add(raw)
    if len(raw) < MIN_LENGTH:
        raise CheckFailed(f"the key from {source} is shorter than {MIN_LENGTH} characters ({len(raw)}); the api and "
                          "worker refuse it", hint="generate one with `aixsss-ops keys generate`")
    return Key(raw, source)


def _setting_key(s: Setting | None) -> Key | None:
    return None if s is None else key(s.value, s.source)


def keys_dir(dep: Deployment) -> Path:
    return dep.cfg.state / "keys"


def _service_envs(dep: Deployment) -> dict[str, dict[str, str]]:
    return {svc: env for svc, env in dep.envs.items() if svc in SERVICES}


def service_env_files(dep: Deployment) -> dict[str, Path]:
    return {svc: dep.layout.env_file(svc) for svc in SERVICES}


def register_known(dep: Deployment) -> None:
    """Teach the scrubber every key the env and env files hold, before anything can fail and print."""
    for name in (KEY, PREVIOUS, NEXT):
        scrubber.add(dep.environ.get(name))
        for env in _service_envs(dep).values():
            scrubber.add(env.get(name))


def candidates(dep: Deployment, extra: list[Key] = ()) -> dict[str, Key]:
    """Every key within reach by fingerprint: flags first, then the environment, then the env files."""
    environ = dep.environ
    out: dict[str, Key] = {}
    found = list(extra)
    for name in (KEY, PREVIOUS, NEXT):
        if environ.get(name):
            found.append(Key(environ[name], f"env {name}"))
        for svc, env in _service_envs(dep).items():
            if env.get(name):
                found.append(Key(env[name], f"{name} in {svc}.env"))
    for k in found:
        scrubber.add(k.raw)
        out.setdefault(k.fingerprint, k)
    return out


# -- generate -------------------------------------------------------------------------------------------------

def generate(dep: Deployment, write: bool, force: bool = False) -> dict:
    """A new key; with ``write`` stored into the api and worker env files (0600, atomic), never printed."""
    raw = generate_key()
    scrubber.add(raw)
    fp = fingerprint(derive_key(raw))
    if not write:
        return {"key": raw, "fingerprint": fp, "written": []}
    files = service_env_files(dep)
    current = {svc: (envfile.read(p) if p.exists() else {}) for svc, p in files.items()}
    existing = {svc: env[KEY] for svc, env in current.items() if env.get(KEY)}
    if existing and not force:
        raise CheckFailed(
            f"{', '.join(f'{s}.env' for s in existing)} already hold{'s' if len(existing) == 1 else ''} an "
            f"{KEY}: replacing it would make every stored provider key undecryptable",
            hint="rotate instead: `aixsss-ops keys rotate --generate` (or pass --force on a deployment with no data)")
    written = []
    for svc, path in files.items():
        env = current[svc]
        if env.get(KEY):
            env[PREVIOUS] = env[KEY]
        env[KEY] = raw
        _write_env(path, env)
        written.append(str(path))
    return {"key": None, "fingerprint": fp, "written": written}


def _write_env(path: Path, env: dict[str, str]) -> None:
    header = None
    if path.exists():
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        if first and first[0].startswith("# "):
            header = first[0][2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    envfile.write(path, env, header)


# -- check ----------------------------------------------------------------------------------------------------

def check(dep: Deployment, *, others: list[str] = (), workers: int | None = None,
          progress: Callable[[int], None] | None = None) -> dict:
    """Whose key every stored value is; api/worker env agreement; the rotation in progress, if any. The key and the
    database are the deployment's (a ``--key``/``--database-url`` flag is one of its sources)."""
    from aixsss_ops.dburl import parse_database_url
    from aixsss_ops.keys.engine import Engine
    from aixsss_ops.keys.rotate import FINAL_PHASES, ProgressFile

    register_known(dep)
    configured = _setting_key(dep.api_key())
    if configured is None:
        raise UsageError(f"no {KEY}: pass --key, set it in the environment, or write it to the env files "
                         "(aixsss-ops keys generate --write)")
    given = [key(raw, f"--other-key #{i}") for i, raw in enumerate(others, 1)]
    pool = {configured.fingerprint: configured}
    for fp, k in candidates(dep, given).items():
        pool.setdefault(fp, k)
    keys = list(pool.values())
    target = parse_database_url(dep.database.value)
    with Engine(target, [k.derived for k in keys], workers=workers) as eng:
        scan = eng.scan(range(len(keys)), progress=progress)
    by_fp = [{"fingerprint": k.fingerprint, "source": k.source, "configured": i == 0, "values": n}
             for i, (k, n) in enumerate(zip(keys, scan.by_key, strict=True))]
    other_values = sum(scan.by_key[1:])
    envs = {svc: env.get(KEY) for svc, env in _service_envs(dep).items()}
    env_fps = {svc: (fingerprint(derive_key(raw)) if raw else None) for svc, raw in envs.items()}
    agree = len(set(env_fps.values())) <= 1
    findings = []
    if scan.bad:
        findings.append(f"{scan.bad} value(s) decrypt with none of the known keys (first: {scan.errors[0]})")
    if other_values:
        who = ", ".join(f"{d['values']} with {d['fingerprint']} ({d['source']})" for d in by_fp[1:] if d["values"])
        findings.append(f"{other_values} value(s) decrypt only with another key than the configured one: {who}")
    if not agree:
        findings.append("api.env and worker.env hold different API_KEY_ENCRYPTION_KEY values: "
                        + ", ".join(f"{s}.env {fp}" for s, fp in env_fps.items()))
    prog = ProgressFile(keys_dir(dep)).load()
    rotation = None
    if prog:
        rotation = {k: prog.get(k) for k in ("phase", "mode", "old_fingerprint", "new_fingerprint", "reencrypted",
                                             "batches", "updated_at", "error")}
        if prog.get("phase") not in FINAL_PHASES:
            findings.append(f"a key rotation {prog.get('old_fingerprint')} -> {prog.get('new_fingerprint')} is "
                            f"unfinished (phase {prog.get('phase')}): rerun `aixsss-ops keys rotate` to finish it")
    return {
        "ok": not findings,
        "key_fingerprint": configured.fingerprint,
        "key_source": configured.source,
        "database": target.masked,
        "rows": scan.rows,
        "values": scan.values,
        "nulls": scan.nulls,
        "decrypt_ok": scan.by_key[0],
        "other_key": other_values,
        "undecryptable": scan.neither,
        "malformed": scan.malformed,
        "fingerprints": by_fp,
        "errors": [str(e) for e in scan.errors],
        "env_files": {"fingerprints": env_fps, "agree": agree},
        "rotation": rotation,
        "findings": findings,
    }


# -- rotate ---------------------------------------------------------------------------------------------------

@dataclass
class RotateOptions:
    new_key: str | None = None
    generate: bool = False
    old_key: str | None = None
    db_only: bool = False
    rollback: bool = False
    drain_timeout: float = 120.0
    batch: int | None = None
    workers: int | None = None
    lock_timeout: float | None = None  # seconds a write waits for a row lock (default: rotate.LOCK_TIMEOUT)


def _env_files_key(dep: Deployment, name: str) -> Key | None:
    """``name`` from the api and worker env files, which must agree (exit 3 otherwise)."""
    files = service_env_files(dep)
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise UsageError(f"env file(s) not found: {', '.join(missing)}",
                         hint="for a deployment whose env is managed elsewhere use `keys rotate --db-only`")
    vals = {svc: envfile.read(p).get(name) for svc, p in files.items()}
    found = {svc: key(v, f"{name} in {svc}.env") for svc, v in vals.items() if v}
    if not found:
        return None
    fps = {k.fingerprint for k in found.values()}
    if len(fps) > 1 or len(found) != len(files):
        raise CheckFailed(f"api.env and worker.env disagree on {name}: "
                          + ", ".join(f"{s}.env {found[s].fingerprint if s in found else 'unset'}" for s in files),
                          hint="the api and the worker must share one key; fix the env files first "
                               "(`aixsss-ops keys check` shows whose key the stored values are)")
    return next(iter(found.values()))


def _edit_env_files(dep: Deployment, change: Callable[[dict[str, str]], None]) -> list[str]:
    written = []
    for path in service_env_files(dep).values():
        env = envfile.read(path)
        before = dict(env)
        change(env)
        if env != before:
            _write_env(path, env)
        written.append(str(path))
    return written


def prepare(dep: Deployment, opts: RotateOptions, *, say=None, progress=None,
            restart: Callable[[Callable[[str], None]], dict] | None = None,
            preflight: Callable[[], None] | None = None) -> Rotation:
    """Resolve keys, targets and hooks for ``keys rotate`` (nothing is changed here). ``restart`` restarts the app
    with the new key (a blue/green restart, handed in by the use-case layer); a full rotation needs it.
    ``preflight`` raises what would refuse that restart; a full rotation runs it before its first step."""
    from aixsss_ops.dburl import parse_database_url
    from aixsss_ops.keys.rotate import DB_PHASES, FINAL_PHASES, LOCK_TIMEOUT, ProgressFile, Rotation

    register_known(dep)
    if opts.generate and opts.new_key:
        raise UsageError("pass either --new-key or --generate")
    if opts.rollback and (opts.generate or opts.new_key):
        raise UsageError("--rollback goes back to the kept previous key; it takes no --new-key/--generate")
    if opts.lock_timeout is not None and opts.lock_timeout <= 0:
        raise UsageError("--lock-timeout takes a number of seconds above 0")
    if opts.db_only and opts.generate:
        raise UsageError("--db-only cannot keep a generated key anywhere: generate one with `aixsss-ops keys "
                         "generate`, store it in your secret manager, then pass it with --new-key")
    new_flag = key(opts.new_key, "--new-key") if opts.new_key else None
    old_flag = key(opts.old_key, "--old-key") if opts.old_key else None
    prior = ProgressFile(keys_dir(dep)).load()
    if prior and prior.get("phase") in FINAL_PHASES:
        prior = None
    pool = candidates(dep, [k for k in (new_flag, old_flag) if k])
    if prior and not opts.db_only:  # the env files may be half-written by a killed run: keys come from the pool
        files_key = _env_files_key
        def _env_files_key_tolerant(c, name):  # noqa: E306
            try:
                return files_key(c, name)
            except CheckFailed:
                return None
        env_key_of = _env_files_key_tolerant
    else:
        env_key_of = _env_files_key

    if opts.db_only:
        current = old_flag or _setting_key(dep.api_key())
        if current is None:
            raise UsageError(f"no {KEY}: pass --old-key or set {KEY} in the environment")
        if opts.rollback:
            new = _setting_key(dep.api_key(PREVIOUS))
            if new is None:
                raise CheckFailed(f"no previous key to roll back to: set {PREVIOUS} in the environment")
        else:
            new = new_flag
    else:
        env_key = dep.environ.get(KEY)
        current = old_flag or env_key_of(dep, KEY)
        if current is None and not prior:
            raise UsageError(f"the env files hold no {KEY}", hint="create one with `aixsss-ops keys generate --write`")
        if env_key and current and derive_key(env_key) != current.derived and not prior:
            raise UsageError(f"the environment's {KEY} is not the key of the env files; the services read the env "
                             "files", hint="unset it, or use --db-only if the env is managed elsewhere")
        if opts.rollback:
            new = env_key_of(dep, PREVIOUS)
            if new is None and not prior:
                raise CheckFailed(f"no previous key to roll back to: the env files hold no {PREVIOUS}")
        elif opts.generate:
            new = key(generate_key(), "--generate")
        else:
            new = new_flag

    if prior:  # finish (or, with --rollback in a database phase, revert) the unfinished rotation
        old_k, new_k = pool.get(prior["old_fingerprint"]), pool.get(prior["new_fingerprint"])
        if opts.rollback and prior["phase"] in DB_PHASES:
            if not (old_k and new_k):
                raise CheckFailed("the keys of the unfinished rotation are not both within reach",
                                  hint="pass the missing one with --new-key or --old-key")
            old, new, mode = old_k, new_k, prior.get("mode", "full")
        elif new is not None and not opts.generate and new.fingerprint != prior["new_fingerprint"]:
            old, new, mode = current, new, "db-only" if opts.db_only else "full"  # Rotation refuses it, with a hint
        else:
            if new_k is None or old_k is None:
                missing = prior["new_fingerprint"] if new_k is None else prior["old_fingerprint"]
                raise CheckFailed(f"an unfinished rotation ({prior['old_fingerprint']} -> {prior['new_fingerprint']}, "
                                  f"phase {prior['phase']}) needs key {missing}, which is nowhere within reach",
                                  hint="pass it with --new-key (or --old-key)")
            old, new, mode = old_k, new_k, prior.get("mode", "full")
    else:
        if new is None:
            raise UsageError("pass --new-key KEY or --generate (or --rollback)")
        old, mode = current, ("db-only" if opts.db_only else "full")
        if opts.rollback:
            mode = "rollback-db-only" if opts.db_only else "rollback"
    if new.derived == old.derived:
        raise CheckFailed(f"the new key ({new.source}) is the current key ({old.source}): nothing to rotate")

    target = parse_database_url(dep.database.value)
    db_only = mode.endswith("db-only")
    if not db_only and restart is None:
        raise UsageError("a full rotation restarts the app: nothing here can restart it (use --db-only)")
    hooks = _hooks(dep, dep.redis.value, dep.queue.value, old, new, db_only=db_only, restart=restart)
    if not db_only:
        hooks.preflight = preflight
    rot = Rotation(target=target, old=old.derived, new=new.derived, mode=mode, state_dir=keys_dir(dep), hooks=hooks,
                   queue=dep.queue.value, drain_timeout=opts.drain_timeout, workers=opts.workers, batch=opts.batch, say=say,
                   progress=progress, lock_timeout=opts.lock_timeout or LOCK_TIMEOUT)
    rot.revert_only = bool(prior and opts.rollback and prior["phase"] in DB_PHASES)
    rot.new_source = new.source
    return rot


def _hooks(dep: Deployment, redis_url: str, queue: str, old: Key, new: Key, db_only: bool, restart):
    from aixsss_ops.keys.rotate import Hooks
    from aixsss_ops.queue import control

    def pause() -> bool:
        return not control.pause(redis_url, queue).changed

    def drain(timeout: float) -> tuple[bool, int]:
        r = control.drain_wait(redis_url, queue, timeout)
        return r.drained, r.active

    def resume() -> None:
        control.resume(redis_url, queue)

    h = Hooks(pause=pause, drain=drain, resume=resume)
    if db_only:
        return h

    def stage(env: dict[str, str]) -> None:
        env[NEXT] = new.raw

    def unstage(env: dict[str, str]) -> None:
        env.pop(NEXT, None)

    def commit(env: dict[str, str]) -> None:
        env[KEY] = new.raw
        env[PREVIOUS] = old.raw
        env.pop(NEXT, None)

    h.stage_new_key = lambda: _edit_env_files(dep, stage)
    h.unstage_new_key = lambda: _edit_env_files(dep, unstage)
    h.write_env = lambda: _edit_env_files(dep, commit)
    h.restart = restart
    return h


def next_steps(rot: Rotation) -> list[str]:
    if not rot.mode.endswith("db-only"):
        return []
    return [f"give api and worker the new key (fingerprint {rot.new_fp}) as {KEY} and keep the old one "
            f"(fingerprint {rot.old_fp}) as {PREVIOUS}, then restart them",
            f"then resume the queue: aixsss-ops queue resume --queue {rot.queue}",
            "until then the queue stays paused: a worker with the old key would fail every job"]
