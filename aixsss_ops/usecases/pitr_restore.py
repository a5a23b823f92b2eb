"""``restore --to-time T`` of a deployment: the database replayed to T by pgBackRest into a new data folder swapped
in, the objects rewound to T, provider keys re-encrypted when the key changed since T, the app restarted.

Only the embedded stack's cluster (``backup.pitr``), local runtime (pgBackRest a process of this machine) or docker
(pgBackRest in the Postgres container, its repository a volume): the engine's ``site`` says where it runs and where
the data folders are; everything here is the same for both. What it would do, and what it checks before it changes
anything, is ``pitr_plan``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aixsss_ops.backup import objects, rekey
from aixsss_ops.backup import pitr as engine_mod
from aixsss_ops.backup.pitr import Engine, iso
from aixsss_ops.backup.pitr_sites import RestoreNotStopped
from aixsss_ops.context.deployment import PREVIOUS_KEY, Deployment
from aixsss_ops.errors import CheckFailed, OpsError
from aixsss_ops.fsutil import atomic_write_json, read_json
from aixsss_ops.poll import poll_until
from aixsss_ops.usecases import pitr_plan as planning
from aixsss_ops.usecases.backup import api_key, database
from aixsss_ops.usecases.pitr import Say, engine

RECOVERY_TIMEOUT = 3600.0


def _stack(dep: Deployment):
    from aixsss_ops.stack.engines import open_stack

    return open_stack(dep)


def _journal(dep: Deployment) -> Path:
    return engine_mod.journal_path(dep.layout)


def pending_message(j: dict) -> tuple[str, str]:
    """(message, hint) of a pending ``restore --to-time`` journal ``j``: what refuses ``stack up`` meanwhile."""
    return (f"an interrupted restore --to-time (to {j.get('target')}) is pending",
            f"`aixsss-ops --yes restore --to-time {j.get('target')}` finishes it")


def stack_down(dep: Deployment) -> str | None:
    """Why the stack is not running (None when it runs): its engine does not answer, or none of its own services
    (postgres, redis, s3, the proxy; the external ones left out) runs, as after `stack down`."""
    stack = _stack(dep)
    problem = stack.engine_problem()
    if problem is not None:
        return problem
    states = {s: stack.runtime.state(s) for s in ("postgres", "redis", "s3", "proxy") if s not in dep.cfg.external}
    if any(st in ("RUNNING", "STARTING") for st in states.values()):
        return None
    return ", ".join(f"{s} {st}" for s, st in states.items())


def _require_running(dep: Deployment, pending: dict | None) -> None:
    """A stack that is not running is refused before anything changes (CheckFailed); with a pending journal, naming
    the restore that finishes it (`stack up` then starts the infrastructure alone for it). Postgres alone stopped is
    not this: the planning names a live database that does not answer."""
    problem = stack_down(dep)
    if problem is None:
        return
    if pending:
        msg, hint = pending_message(pending)
        raise CheckFailed(f"{msg} and the stack is not running ({problem})",
                          hint=f"`aixsss-ops stack up` (it starts the infrastructure alone), then {hint}")
    raise CheckFailed("the stack is not running: `aixsss-ops stack up` first", details=problem)


def recover_interrupted(dep: Deployment, eng: Engine | None = None,
                        say: Say = lambda _m: None) -> dict[str, Any] | None:
    """What a killed ``restore --to-time`` left. Before the restored folder took the live one's place it is undone:
    a partial data folder goes, a live folder moved aside comes back, Postgres and the app units it had stopped are
    started again (None). Once the restored folder is live it is finished forward: the restored cluster is started
    and must promote (else ``_roll_back``), then the objects are rewound to the journal's target, the keys
    re-encrypted and the stopped units started; the finished restore's result is returned."""
    j = read_json(_journal(dep), None)
    if not j:
        return None
    site = (eng or engine(dep)).site
    path = type(site.data)
    new, kept = path(j["new"]), path(j["kept"])
    units = [tuple(u) for u in j.get("stopped") or []]
    stack = _stack(dep)
    if j.get("phase") != "finishing":
        done = site.settle(stack.runtime, kept, new)
        if j.get("phase") == "swapping" and site.exists(kept) and not site.exists(new):
            # the restored folder has taken the live one's place: finished forward, never undone
            say(f"interrupted restore: the restored data folder is live (the previous one is kept as {kept.name}); "
                "waiting for it to promote")
            if stack.runtime.state("postgres") not in ("RUNNING", "STARTING"):
                stack.runtime.start("postgres")
            try:
                reached = _recovery_point(dep, stack.runtime)
            except Exception:
                _roll_back(dep, site, stack, kept, kept.name.removeprefix("data.pre_pitr_"), units, say)
                raise
            j = _finishing(dep, j, reached)
            return _finish(dep, stack, j, None, say)
        if site.exists(kept):
            done.append(f"the data folder live before it is kept as {kept}")
        if new != site.data and site.exists(new):
            site.rmtree(new)
            done.append(f"removed the partial restore {new.name}")
        if stack.runtime.state("postgres") not in ("RUNNING", "STARTING"):
            stack.runtime.start("postgres")
            done.append("started postgres")
        for service, color in units:
            stack.runtime.start(service, color)
        _journal(dep).unlink(missing_ok=True)
        for d in done:
            say(f"interrupted restore: {d}")
        return None
    say(f"interrupted restore: finishing the restore to {j['target']} (the restored cluster runs)")
    return _finish(dep, stack, j, None, say)


def _while_restoring(restore: Callable[[threading.Event], None], checks: list[Callable[[], Any]],
                     then: Callable[[list[Any]], Any] | None = None) -> tuple[list[Any], Any]:
    """``restore(abort)`` with ``checks`` running beside it, each in a thread of its own, and ``then(results)`` once
    all of them have passed, still beside the restore. The first check (or ``then``) to fail sets ``abort`` (the
    restore stops) and its error is raised once the restore has returned; a restore that fails by itself raises its
    own error, and ``then`` is not begun after that. Whatever is raised, ``then`` has ended first. Else the checks'
    results, in order, and what ``then`` returned."""
    abort, failed = threading.Event(), threading.Event()
    pool = ThreadPoolExecutor(len(checks) + 1, thread_name_prefix="pitr-check")
    futures = [pool.submit(c) for c in checks]
    for f in futures:
        f.add_done_callback(lambda f: f.exception() is not None and abort.set())

    def when_checked() -> Any:
        results = [f.result() for f in futures]
        return None if then is None or failed.is_set() else then(results)

    after = pool.submit(when_checked)
    after.add_done_callback(lambda f: f.exception() is not None and abort.set())
    pool.shutdown(wait=False)  # the checks run on; their results are read below
    try:
        restore(abort)
    except RestoreNotStopped:
        failed.set()
        raise  # a process of it still writes: that outranks why it was stopped
    except Exception:
        failed.set()
        if not abort.is_set():
            raise
    finally:
        wait_futures([after])
    return [f.result() for f in futures], after.result()


NOT_REACHED = "recovery ended before configured recovery target was reached"  # Postgres's FATAL message


def _recovery_point(dep: Deployment, runtime) -> datetime | None:
    """Wait until the restored cluster has promoted; the last replayed commit's time (None: none replayed). A
    cluster the engine reports failed (exited, restarting, given up) twice, a second apart, is an error at once:
    replay that stops short of T makes Postgres exit, and the engine restarts it to the same end."""
    import psycopg

    from aixsss_ops.backup.postgres import admin_target
    from aixsss_ops.runtime.base import FAILED_STATES

    target = admin_target(database(dep))
    failed_at: list[float] = []

    def promoted():
        if runtime.state("postgres") in FAILED_STATES:
            failed_at.append(time.monotonic())
            if failed_at[-1] - failed_at[0] >= 1:
                return ("failed",)
            return None
        try:
            with target.connect(timeout=3) as c:
                if c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return None
                return (c.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()[0],)
        except (OpsError, psycopg.Error):
            return None

    got = poll_until(promoted, RECOVERY_TIMEOUT, interval=0.05)
    if got is None or got == ("failed",):
        log = runtime.logs("postgres", lines=30) if got else ""
        if NOT_REACHED in log:
            raise OpsError("the restored cluster ended its replay before reaching the target: no commit after it "
                           "was archived", details=log.strip(),
                           hint="the restore commits a transaction after T when the live database answers; "
                                "start it (`aixsss-ops stack up`) or choose a T before the last archived commit")
        raise OpsError("the restored cluster did not finish recovery" + (" (Postgres keeps exiting)" if got else ""),
                       details=log.strip() or None,
                       hint="see `aixsss-ops stack logs postgres`")
    return got[0]


def rewind_objects(dep: Deployment, target_text: str, *, dry_run: bool = False,
                   say: Say = lambda _m: None) -> dict[str, Any]:
    """``restore --to-time T --objects-only``: the bucket alone as it was at T (a T inside the window, whose
    versions the lifecycle rule keeps); the database and the app are left as they are."""
    eng = engine(dep)
    target, _info, _chosen = planning.start(dep, target_text, eng, datetime.now(UTC), with_database=False)
    if dry_run:
        return {"dry_run": True, "target": iso(target), "objects": planning.object_plan(dep, target).to_dict()}
    with _exclusive(dep, f"restore --to-time {target_text} --objects-only"):
        obj_plan = planning.object_plan(dep, target)
        say(f"rewinding bucket {obj_plan.bucket} to {iso(target)}: {len(obj_plan.copy)} version(s) made current, "
            f"{len(obj_plan.hide)} delete marker(s)")
        return {"target": iso(target), "objects": objects.apply_restore(dep.s3, obj_plan)}


def restore_to_time(dep: Deployment, target_text: str, *, dry_run: bool = False, with_objects: bool = True,
                    say: Say = lambda _m: None) -> dict[str, Any]:
    """``restore --to-time T``: the database and (``with_objects``) the objects as they were at T. Once the restored
    cluster runs, what fails after it (the objects, the keys, the app's start) does not stop the rest: the app is
    started again whatever happened, and the failures are raised together at the end."""
    eng = engine(dep)
    if dry_run:  # changes nothing, an interrupted run's leftovers included
        p = planning.plan(dep, target_text, eng, with_objects=with_objects)
        pending = read_json(_journal(dep), None)
        if pending:
            p.warnings.append(f"an interrupted restore --to-time left {pending['new']} (target {pending['target']}): "
                              "the next restore finishes it first (undoes it when it was killed before the swap)")
        return {"dry_run": True, "plan": p.to_dict()}
    with _exclusive(dep, f"restore --to-time {target_text}"):
        pending = read_json(_journal(dep), None)
        _require_running(dep, pending)
        finished = recover_interrupted(dep, eng, say)
        if finished is not None and iso(engine_mod.parse_target(target_text)) == pending.get("target"):
            return finished  # the pending restore was to this T: not restored a second time
        return _restore(dep, eng, target_text, with_objects, say)


def _exclusive(dep: Deployment, action: str):
    """The deploy lock for the length of a restore: no deploy, rollback or other restore meanwhile (LockBusy, naming
    the holder, when one runs)."""
    from aixsss_ops.deploy.lock import DeployLock

    lock = DeployLock(dep.layout.deploy_dir)
    lock.acquire(0, {"action": action})
    return lock


def _restore(dep: Deployment, eng: Engine, target_text: str, with_objects: bool, say: Say) -> dict[str, Any]:
    site = eng.site
    data = site.data
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    new = data.parent / f"data.pitr-{stamp}.partial"
    kept = data.parent / f"data.pre_pitr_{stamp}"
    # pgBackRest restores the base backup while the WAL switch check and the first object listing run: the restore
    # reads no WAL (Postgres fetches it when it starts on the folder, after both have passed), and the first of them
    # to fail stops it; the timeline comes from the archive as listed before the switch (a history file archived by
    # T is in it), and the restore is made again should the listing after the switch differ. Once both have passed
    # the app is stopped, still beside the restore (what it would write from then on is replaced by T's data
    # anyway), and once stopped the objects are listed again
    target, info, chosen = planning.start(dep, target_text, eng, now)
    timeline = engine_mod.timeline_at(eng.wal_files(info.archive_id)[1], target)
    journal = {"target": iso(target), "new": str(new), "kept": str(kept), "stopped": [],
               "with_objects": with_objects}
    _journal(dep).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(_journal(dep), journal, mode=0o600)
    site.mkdir(new)
    stack = _stack(dep)
    stopped: list[tuple[str, str]] = []

    def stop_app(results: list[Any]):
        """The app stopped (all at once: each drains on its own, the slowest bounds the wait), the units recorded
        in the journal first; then the objects' second listing begun (its future, None without objects)."""
        from aixsss_ops.runtime.base import is_app, wait_stopped

        units = [(u.service, u.color) for u in stack.runtime.status()
                 if is_app(u.service) and u.state in ("RUNNING", "STARTING")]
        journal["stopped"] = units
        atomic_write_json(_journal(dep), journal, mode=0o600)
        stopped.extend(units)
        for service, color in units:
            say(f"stopping {service}-{color}")
            stack.runtime.stop(service, color, wait=False)
        if not wait_stopped(stack.runtime, units, dep.cfg.supervisor.stop_timeout + 30):
            raise OpsError(f"the app did not stop: {', '.join(f'{s}-{c}' for s, c in units)}",
                           hint="`aixsss-ops stack status`; the live cluster was not touched")
        obj_plan = results[1][0]
        if obj_plan is None:
            return None
        listing = ThreadPoolExecutor(1, thread_name_prefix="pitr-objects")
        later = listing.submit(objects.rewind_plan, dep.s3, obj_plan.bucket, target)
        listing.shutdown(wait=False)  # the listing runs on; its result is read after the swap
        return later

    say(f"pgbackrest restore of {chosen.label} into {new.name} (target {iso(target)})")
    started = datetime.now(UTC)
    try:
        (arch, objs), replanned = _while_restoring(
            lambda abort: eng.restore(new, chosen.label, target, timeline, abort),
            [lambda: planning.archived(dep, eng, info, target),
             lambda: (planning.objects_at if with_objects else planning.no_objects)(dep, target)],
            then=stop_app)
    except RestoreNotStopped as e:
        # the folder and the journal stay: the next run stops what is left of the restore, then removes it
        _restart_stopped(dep, stack, journal, stopped, say)
        raise OpsError(str(e), hint=f"{e.hint}; the live cluster was not touched; the next `restore --to-time` "
                                    f"stops that restore and removes {new.name}") from None
    except Exception:
        site.rmtree(new)  # the live cluster was not touched
        _restart_stopped(dep, stack, journal, stopped, say)
        _journal(dep).unlink(missing_ok=True)
        raise
    p = planning.assemble(target, chosen, arch, objs)
    if p.timeline != timeline:
        say(f"timeline {p.timeline} was live at {iso(target)}: restoring again on it")
        site.rmtree(new)
        site.mkdir(new)
        eng.restore(new, chosen.label, target, p.timeline)
    units = list(stopped)
    journal.update(phase="swapping", base_backup=p.backup.label, timeline=p.timeline, warnings=list(p.warnings),
                   backup_stopped=iso(p.backup.stopped), started=iso(started),
                   bucket=p.objects.bucket if p.objects is not None else None)
    atomic_write_json(_journal(dep), journal, mode=0o600)
    say(f"restarting postgres on the restored data folder; the live one is kept as {kept}")
    try:
        site.switch(stack.runtime, [(data, kept), (new, data)])
        reached = _recovery_point(dep, stack.runtime)
    except Exception:
        _roll_back(dep, site, stack, kept, stamp, units, say)
        raise
    return _finish(dep, stack, _finishing(dep, journal, reached), replanned, say)


def _restart_stopped(dep: Deployment, stack, journal: dict, stopped: list, say: Say) -> None:
    """A restore that ends before the swap: the app units it had stopped started again (waited for), and the
    journal told so. The restore's own error is the one raised: a unit that does not get ready is said."""
    if not stopped:
        return
    try:
        _restart_app(stack, list(stopped), say)
    except OpsError as e:
        say(f"the app stopped for the restore is not ready again: {e.message}")
    journal["stopped"] = []
    if _journal(dep).exists():
        atomic_write_json(_journal(dep), journal, mode=0o600)


def _finishing(dep: Deployment, journal: dict, reached: datetime | None) -> dict:
    """The restored cluster has promoted: the journal's phase "finishing" (kept until the app is started again),
    with what the result reports of the database."""
    started = journal.get("started")
    journal = {**journal, "phase": "finishing",
               "recovery_point": iso(reached) if reached else journal.get("backup_stopped"),
               "recovery_point_source": "last replayed commit" if reached else
               "base backup end (no commit replayed after it)",
               "database_s": (datetime.now(UTC) - datetime.fromisoformat(started.replace("Z", "+00:00")))
               .total_seconds() if started else None}
    atomic_write_json(_journal(dep), journal, mode=0o600)
    return journal


def _finish(dep: Deployment, stack, j: dict, replanned, say: Say) -> dict[str, Any]:
    """A restored cluster that has promoted (journal ``j``, phase "finishing"): the objects rewound to the target
    (``replanned``: their plan listed meanwhile; None: listed now), provider keys re-encrypted, the app units the
    restore stopped started again, then the journal removed. What fails does not stop the rest: the failures are
    raised together at the end."""
    target = datetime.fromisoformat(j["target"].replace("Z", "+00:00"))
    units = [tuple(u) for u in j.get("stopped") or []]
    kept = j["kept"]
    result: dict[str, Any] = {"target": j["target"], "base_backup": j.get("base_backup"),
                              "timeline": j.get("timeline"), "recovery_point": j.get("recovery_point"),
                              "recovery_point_source": j.get("recovery_point_source"),
                              "kept_data_dir": kept, "database_s": j.get("database_s"), "objects": None, "keys": None,
                              "warnings": list(j.get("warnings") or [])}
    failed: list[tuple[str, OpsError, str]] = []  # (what, error, what finishes it)
    if j.get("with_objects") and j.get("bucket"):
        say(f"rewinding bucket {j['bucket']}")
        try:
            _snap, again = replanned.result() if replanned is not None else \
                objects.rewind_plan(dep.s3, j["bucket"], target)
            result["objects"] = objects.apply_restore(dep.s3, again)
        except OpsError as e:
            failed.append(("the objects were not rewound", e,
                           f"`aixsss-ops restore --to-time {j['target']} --objects-only` rewinds them alone"))
    try:
        result["keys"] = _rekey(dep, result["warnings"])
    except OpsError as e:
        failed.append(("provider keys were not re-encrypted", e,
                       "`aixsss-ops keys check` names the values the current key cannot open"))
    try:
        _restart_app(stack, units, say)
    except OpsError as e:
        failed.append(("the app did not get ready", e, "`aixsss-ops stack status`, `aixsss-ops stack logs`"))
    _journal(dep).unlink(missing_ok=True)  # the app is started again: nothing of the restore is left to do
    result["restarted"] = [f"{s}-{c}" for s, c in units]
    if failed:
        raise OpsError(f"the database is restored to {result['recovery_point']} (the previous data folder is kept "
                       f"as {kept}), but " + "; ".join(f"{what}: {e.message}" for what, e, _h in failed),
                       hint="; ".join(h for _w, _e, h in failed),
                       details="\n".join(e.details for _w, e, _h in failed if e.details) or None)
    return result


def _roll_back(dep: Deployment, site, stack, kept, stamp: str, units, say: Say) -> None:
    """The restored cluster did not come up: it goes aside (for a look), the previous one back, and runs again."""
    data = site.data
    failed = data.parent / f"data.failed_pitr_{stamp}"
    say(f"the restored cluster did not come up: moving it to {failed.name} and the previous one back")
    site.switch(stack.runtime, [(data, failed), (kept, data)], strict=False)
    _journal(dep).unlink(missing_ok=True)
    try:
        _restart_app(stack, units, say)
    except OpsError as e:  # the restore's own error is the one raised
        say(f"after the roll-back the app is not ready: {e.message}")


def _restart_app(stack, units: list, say: Say) -> None:
    """The app units a restore stopped, started again and waited for (OpsError when one does not get ready)."""
    if not units:
        return
    for service, color in units:
        stack.runtime.start(service, color)
    defs = [d for c in {c for _s, c in units} for d in stack.app_defs(c) if (d.service, d.color) in set(units)]
    stack.wait_ready(defs, say)


def _rekey(dep: Deployment, warnings: list[str]) -> dict[str, int] | None:
    """Provider keys stored at T under a key rotated away since: re-encrypted with the current key (given the
    previous one)."""
    current, _src = api_key(dep)
    if current is None:
        return None
    pg = database(dep)
    if rekey.undecryptable(pg, current) == 0:
        return {"reencrypted": 0}
    old, _ = api_key(dep, PREVIOUS_KEY)
    if old is None:
        warnings.append("some provider keys were stored under an earlier API_KEY_ENCRYPTION_KEY and no "
                        f"{PREVIOUS_KEY} is set: re-encrypt them with `aixsss-ops keys rotate`")
        return None
    counts = rekey.rekey_profiles(pg, old, current)
    return {"reencrypted": counts["reencrypted"]}
