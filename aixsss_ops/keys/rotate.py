"""``keys rotate``: the ordered steps, their guarantees and the progress file.

1. every value must decrypt with the old key (or already with the new one) before anything changes; the check seals
   the new values and writes step 3's batches ahead, uncommitted (rolled back if it fails);
2. the queue is paused and active jobs drain (with a timeout), so no worker decrypts mid-rotation; the batches
   written ahead keep their row locks for at most STAGED_HOLD seconds of that wait, then are rolled back;
3. batches re-encrypt old values (``engine.Engine.reencrypt``: one transaction each, row locks, new values skipped;
   the batches written ahead are committed, one transaction per writer connection);
4. every value is verified with the new key (late writes of the old key are re-encrypted first);
5. the env files get the new key, the old one kept as ``API_KEY_ENCRYPTION_KEY_PREVIOUS``;
6. api and worker restart blue/green through the runtime, the old color's api is stopped (it still holds the old
   key), a last sweep re-encrypts what it wrote meanwhile, everything is verified again, the queue resumes.

What would refuse step 6 (``Hooks.preflight``: the migration ledger the redeploy checks) is checked before step 1, so
such a refusal changes nothing. The writes wait at most ``lock_timeout`` seconds for a row lock held elsewhere; the
failure names the sessions holding the rows. SIGTERM (``interrupt``, then KeyboardInterrupt) cancels the writes
waiting for a lock at once.

A handled failure before step 5 re-encrypts back to the old key (the services still run with it), resumes the
queue and says so. A SIGKILL leaves each value in exactly one of the two keys, the queue paused and the progress
file (phase, counts, fingerprints, never keys) naming the phase: rerunning finishes, ``--rollback`` reverts.
In the full mode the new key is written to the env files as ``API_KEY_ENCRYPTION_KEY_NEXT`` before the first
value is re-encrypted, so a generated key survives a kill.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aixsss_ops.crypto import fingerprint
from aixsss_ops.dburl import PgTarget
from aixsss_ops.errors import CheckFailed, OpsError
from aixsss_ops.fsutil import atomic_write_json, read_json
from aixsss_ops.keys.engine import LOCK_KEY, LOCK_TIMEOUT, Engine
from aixsss_ops.keys.locks import HOLDERS, describe_holders, lock_error
from aixsss_ops.keys.model import TABLE, BadValues, PassResult, ScanResult

Say = Callable[[str], None]

DB_PHASES = ("checked", "reencrypting", "verifying")  # the env files still hold the old key
ENV_PHASES = ("env-written", "restarted")  # the env files hold the new key
FINAL_PHASES = ("done", "db-done", "reverted")
STAGED_HOLD = 2.0  # seconds the check's uncommitted batches may wait for the queue to drain before rolling back


def now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


class ProgressFile:
    """``<state>/keys/rotation.json``, rewritten atomically after every step and batch. Never holds a key."""

    def __init__(self, directory: Path):
        self.path = directory / "rotation.json"

    def load(self) -> dict | None:
        return read_json(self.path)

    def save(self, data: dict, *, sync: bool = True) -> None:
        data["updated_at"] = now_iso()
        atomic_write_json(self.path, data, mode=0o600, sync=sync)


@dataclass
class Hooks:
    """What the rotation does outside the database; None where the mode does not do it."""

    stage_new_key: Callable[[], None] | None = None  # full mode: API_KEY_ENCRYPTION_KEY_NEXT into the env files
    unstage_new_key: Callable[[], None] | None = None
    write_env: Callable[[], list[str]] | None = None  # step 5; returns the files written
    restart: Callable[[Say], dict] | None = None  # step 6; returns what it did
    preflight: Callable[[], None] | None = None  # raises what would refuse step 6; run before step 1
    pause: Callable[[], bool] | None = None  # returns whether the queue was already paused
    drain: Callable[[float], tuple[bool, int]] | None = None  # (drained, active)
    resume: Callable[[], None] | None = None


@dataclass
class RotationResult:
    mode: str
    old_fingerprint: str
    new_fingerprint: str
    dry_run: bool = False
    resumed_from: str | None = None
    plan: list[str] = field(default_factory=list)
    check: dict | None = None
    reencrypted: int = 0
    already_new: int = 0
    batches: int = 0
    late_writes: int = 0
    swept: int = 0
    verified: int = 0
    env_files: list[str] = field(default_factory=list)
    restart: dict | None = None
    queue: str | None = None
    queue_resumed: bool = False
    next_steps: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phase: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class RotationFailed(OpsError):
    pass


class Rotation:
    revert_only = False  # --rollback of an unfinished rotation still in a database phase
    new_source = ""

    def __init__(self, *, target: PgTarget, old: bytes, new: bytes, mode: str, state_dir: Path, hooks: Hooks,
                 queue: str | None = None, drain_timeout: float = 120.0, workers: int | None = None,
                 batch: int | None = None, say: Say | None = None,
                 progress: Callable[[str, int, int | None], None] | None = None, lock_timeout: float = LOCK_TIMEOUT):
        if fingerprint(old) == fingerprint(new):
            raise CheckFailed("the new key is the old key (both derive the same AES key): nothing to rotate")
        self.target, self.old, self.new, self.mode = target, old, new, mode
        self.old_fp, self.new_fp = fingerprint(old), fingerprint(new)
        self.file = ProgressFile(state_dir)
        self.hooks, self.queue, self.drain_timeout = hooks, queue, drain_timeout
        self.workers, self.batch = workers, batch
        self.say = say or (lambda _m: None)
        self.progress = progress or (lambda _task, _n, _total: None)
        self.state: dict = {}
        self.lock_timeout = lock_timeout
        self.app = f"aixsss-ops keys rotate {os.getpid()}"  # the application_name of its writer connections
        self._interrupted = threading.Event()
        self._watching = False

    # -- progress file ---------------------------------------------------------------------------------
    def resumable(self) -> dict | None:
        """The unfinished rotation this one continues, if any; a different unfinished one is an error."""
        st = self.file.load()
        if not st or st.get("phase") in FINAL_PHASES:
            return None
        if (st.get("old_fingerprint"), st.get("new_fingerprint")) != (self.old_fp, self.new_fp):
            raise CheckFailed(
                f"an unfinished rotation from key {st.get('old_fingerprint')} to {st.get('new_fingerprint')} "
                f"(phase {st.get('phase')}, {self.file.path}) is not this one ({self.old_fp} -> {self.new_fp})",
                hint="rerun `aixsss-ops keys rotate` with that rotation's new key to finish it, "
                     "or `aixsss-ops keys rotate --rollback` to revert it")
        return st

    def _phase(self, phase: str, **extra) -> None:
        self.state.update(extra, phase=phase)
        self.file.save(self.state)

    # -- steps -----------------------------------------------------------------------------------------
    def _engine(self) -> Engine:
        kw = {"batch": self.batch} if self.batch else {}
        return Engine(self.target, [self.old, self.new], workers=self.workers, lock_timeout=self.lock_timeout,
                      application_name=self.app, **kw)

    # -- lock waits ------------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """SIGTERM or Ctrl-C arrived (called from the signal handler, just before KeyboardInterrupt is raised): the
        writes of this rotation waiting for a row lock are cancelled at once (by a thread started with the run), so
        its writers end and the revert starts now, not after the lock timeout. Safe in a signal handler: it only
        sets an event."""
        self._interrupted.set()

    def _watch(self) -> None:
        if self._watching:
            return
        self._watching = True

        def cancel_waits() -> None:
            while True:
                self._interrupted.wait()
                self._interrupted.clear()
                try:
                    with self.target.connect(timeout=5) as conn:
                        conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
                                     "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()", (self.app,))
                except Exception:  # noqa: BLE001, S110 - the lock timeout still ends the wait
                    pass

        threading.Thread(target=cancel_waits, name="keys-interrupt", daemon=True).start()

    def _lock_failure(self, e: BaseException) -> RotationFailed:
        """A lock timeout as one clear error naming the sessions that hold rows of the table (or lock it whole)."""
        try:
            with self.target.connect(timeout=5) as conn:
                conn.execute("SET statement_timeout = '10s'")
                rows = conn.execute(HOLDERS, (self.app,)).fetchall()
        except Exception as e2:  # noqa: BLE001 - the error is still worth giving
            rows, why = [], f"they could not be listed: {type(e2).__name__}"
        else:
            why = "no session holds a lock on it any more"
        who = describe_holders(rows) if rows else None
        pids = ", ".join(str(r[0]) for r in rows)
        return RotationFailed(
            f'a write waited more than the lock timeout ({self.lock_timeout:g}s) for rows of "{TABLE}" locked by '
            + (who or f"another session ({why})"),
            hint=(f"end that transaction (commit or roll it back; `SELECT pg_terminate_backend(pid)` for pid {pids} "
                  "ends the session), then rerun `aixsss-ops keys rotate`" if rows else
                  "rerun `aixsss-ops keys rotate`") + "; --lock-timeout SECONDS waits longer",
            details=str(e).strip() or None)

    def _explain(self, e: BaseException) -> BaseException:
        return self._lock_failure(e) if lock_error(e) else e

    def _lock(self):
        conn = self.target.connect(timeout=10)
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
            conn.close()
            raise OpsError("another key rotation is running against this database",
                           hint="wait for it to finish (its progress: aixsss-ops keys check)")
        return conn

    def _check(self, eng: Engine, stage: bool = False) -> ScanResult:
        self.say("step 1: checking that every value decrypts with the old key (or already with the new one)")
        scan = eng.scan((0, 1), progress=lambda n: self.progress("check", n, None), reseal=(0, 1), stage=stage)
        if scan.bad:
            raise CheckFailed(
                f"{scan.bad} stored value(s) decrypt with neither the old key ({self.old_fp}) nor the new one "
                f"({self.new_fp}); first: {scan.errors[0]}; nothing was changed",
                details="\n".join(str(e) for e in scan.errors))
        return scan

    def _preflight(self, prior: dict | None) -> None:
        """What would refuse the restart of step 6, before step 1 (nothing is changed yet)."""
        if self.hooks.preflight and (not prior or prior.get("phase") in (*DB_PHASES, "env-written")):
            self.hooks.preflight()

    def plan(self) -> RotationResult:
        st = self.resumable()
        self._preflight(st)
        res = RotationResult(self.mode, self.old_fp, self.new_fp, dry_run=True, queue=self.queue,
                             resumed_from=st.get("phase") if st else None)
        with self._engine() as eng:
            scan = self._check(eng)
        res.check = scan.to_dict()
        old_n, new_n = scan.by_key
        res.plan = [
            f"check {scan.values} value(s) in {scan.rows} profile(s): {old_n} with the old key {self.old_fp}, "
            f"{new_n} already with the new key {self.new_fp}",
        ]
        if self.hooks.pause:
            res.plan.append(f"pause queue '{self.queue}' and wait up to {self.drain_timeout:g}s for active jobs")
        if self.hooks.stage_new_key:
            res.plan.append("keep the new key as API_KEY_ENCRYPTION_KEY_NEXT in the env files (survives a kill)")
        res.plan += [f"re-encrypt {old_n} value(s) in transactions of {self.batch or 'the default'} rows with row "
                     "locks, skipping values already in the new key",
                     "verify every value with the new key"]
        if self.hooks.write_env:
            res.plan.append("write the new key to the api and worker env files, the old one as "
                            "API_KEY_ENCRYPTION_KEY_PREVIOUS")
        if self.hooks.restart:
            res.plan += ["restart api and worker blue/green (the api keeps serving); stop the old color's api",
                         "sweep values the old api wrote meanwhile, verify everything again, resume the queue"]
        elif self.hooks.pause:
            res.plan.append(f"leave queue '{self.queue}' paused until the services run with the new key")
        return res

    def run(self) -> RotationResult:
        t0 = time.monotonic()
        prior = self.resumable()
        res = RotationResult(self.mode, self.old_fp, self.new_fp, queue=self.queue,
                             resumed_from=prior.get("phase") if prior else None)
        self.state = prior or {"mode": self.mode, "old_fingerprint": self.old_fp, "new_fingerprint": self.new_fp,
                               "started_at": now_iso(), "reencrypted": 0, "batches": 0}
        if prior:
            self.say(f"resuming the rotation {self.old_fp} -> {self.new_fp} left in phase {prior['phase']}")
        self._preflight(prior)
        lock = self._lock()
        self._watch()
        try:
            with self._engine() as eng:
                if not prior or prior["phase"] in DB_PHASES:
                    self._database_steps(eng, res)
                    if not self.hooks.write_env:
                        self._phase("db-done")
                        res.phase = "db-done"
                        res.seconds = round(time.monotonic() - t0, 3)
                        return res
                self._env_steps(eng, res)
        finally:
            lock.close()
        res.phase = "done"
        res.seconds = round(time.monotonic() - t0, 3)
        return res

    def abort(self) -> RotationResult:
        """Revert an unfinished rotation that has not reached the env files: every value back to the old key."""
        t0 = time.monotonic()
        prior = self.resumable()
        if not prior or prior["phase"] not in DB_PHASES:
            raise CheckFailed("there is no unfinished rotation before its env step to revert")
        self.state = prior
        res = RotationResult(self.mode, self.old_fp, self.new_fp, queue=self.queue, resumed_from=prior["phase"])
        lock = self._lock()
        self._watch()
        try:
            with self._engine() as eng:
                self.say(f"reverting the unfinished rotation: re-encrypting values of {self.new_fp} back to "
                         f"{self.old_fp}")
                try:
                    p = eng.reencrypt(1, 0, on_batch=lambda b, _last: self.progress("revert", b.rows, None))
                except Exception as e:  # noqa: BLE001 - a lock timeout becomes one clear error
                    if lock_error(e):
                        raise self._lock_failure(e) from None
                    raise
                check = eng.scan((0, 1), progress=lambda n: self.progress("verify", n, None))
                if check.by_key[1] or check.bad:
                    raise RotationFailed(f"{check.by_key[1] + check.bad} value(s) are still not in the old key")
                if self.hooks.unstage_new_key:
                    self.hooks.unstage_new_key()
                res.queue_resumed = self._resume_queue()
                res.reencrypted, res.verified = p.reencrypted, check.by_key[0]
                self._phase("reverted", error="rolled back by the user", finished_at=now_iso())
        finally:
            lock.close()
        res.phase = "reverted"
        res.seconds = round(time.monotonic() - t0, 3)
        return res

    def _database_steps(self, eng: Engine, res: RotationResult) -> None:
        # the check writes the batches of step 3 ahead, uncommitted: nothing changes before it has passed
        scan = self._check(eng, stage=True)
        res.check = scan.to_dict()
        self._phase("checked", values=scan.values, rows=scan.rows, old_at_check=scan.by_key[0])
        if self.hooks.pause:
            was = self.hooks.pause()
            if "queue_was_paused" not in self.state:
                self.state["queue_was_paused"] = was
            self._phase("checked", queue=self.queue)
            self.say(f"step 2: queue '{self.queue}' paused; waiting up to {self.drain_timeout:g}s for active jobs")
            drained, active = self.hooks.drain(min(self.drain_timeout, STAGED_HOLD))
            if not drained:  # the batches written ahead hold their row locks: not for a long wait
                eng.unstage()
                drained, active = self.hooks.drain(max(0.0, self.drain_timeout - STAGED_HOLD))
            if not drained:
                touched = scan.by_key[1] > 0
                if not touched:
                    self._resume_queue()
                    self._phase("reverted", error="active jobs did not finish")
                raise RotationFailed(
                    f"{active} job(s) of '{self.queue}' were still active after {self.drain_timeout:g}s; "
                    + ("nothing was changed and the queue was resumed" if not touched else
                       "the queue stays paused (an earlier run already re-encrypted some values)"),
                    hint="retry later or pass a longer --drain-timeout")
        try:
            if self.hooks.stage_new_key:
                self.hooks.stage_new_key()
            self._phase("reencrypting")
            self.say(f"step 3: re-encrypting {scan.by_key[0]} value(s) with the new key")
            total = scan.rows

            def batch_done(b: PassResult, last_id: str) -> None:
                self.state["reencrypted"] = self.state.get("reencrypted", 0) + b.reencrypted
                self.state["batches"] = self.state.get("batches", 0) + 1
                self.state["last_id"] = last_id
                self.file.save(self.state, sync=False)  # counts only: a rerun redoes a lost batch note anyway
                self.progress("re-encrypt", b.rows, total)

            p = eng.reencrypt(0, 1, on_batch=batch_done)
            res.reencrypted, res.already_new, res.batches = p.reencrypted, p.already, p.batches
            self._phase("verifying")
            self.say("step 4: verifying every value with the new key")
            res.late_writes, res.verified = self._verify(eng, "verify", settle=bool(self.hooks.write_env))
        except BaseException as e:  # noqa: BLE001 - anything, Ctrl-C included, before step 5 is reverted
            self._revert_after(eng, self._explain(e))
        self._phase("verifying", verified=res.verified)  # still a database phase until the env files change

    def _verify(self, eng: Engine, task: str, settle: bool = False) -> tuple[int, int]:
        """Verify all values with the new key; values still in the old key (late writes) are re-encrypted first.

        ``settle``: the services still run with the old key and are restarted next, so values may keep arriving in
        it until then; they are left to the sweep after the restart, whose verification insists on none."""
        late = 0
        for _ in range(5):
            v = eng.scan((1, 0), progress=lambda n: self.progress(task, n, None))
            if v.bad:
                raise BadValues(v.errors)
            if not v.by_key[0]:
                return late, v.by_key[1]
            late += v.by_key[0]
            self.say(f"{v.by_key[0]} value(s) were written with the old key meanwhile: re-encrypting them")
            eng.reencrypt(0, 1, ids=v.straggler_ids)
        if settle:
            self.say("values keep arriving with the old key from the services still running with it: the sweep "
                     "after their restart re-encrypts them")
            return late, v.by_key[1]
        raise RotationFailed("values keep arriving encrypted with the old key; is a service with the old key "
                             "still writing profiles?")

    def _resume_queue(self) -> bool:
        if self.hooks.resume and not self.state.get("queue_was_paused"):
            self.hooks.resume()
            return True
        return False

    def _revert_after(self, eng: Engine, cause: BaseException) -> None:
        why = "interrupted" if isinstance(cause, KeyboardInterrupt) else (
            cause.message if isinstance(cause, OpsError) else f"{type(cause).__name__}: {cause}")
        self.say(f"rotation failed ({why}); re-encrypting back to the old key")
        try:
            eng.reencrypt(1, 0)
            check = eng.scan((0, 1))
            if check.by_key[1] or check.bad:
                raise RotationFailed(f"{check.by_key[1] + check.bad} value(s) are still not in the old key")
            if self.hooks.unstage_new_key:
                self.hooks.unstage_new_key()
            resumed = self._resume_queue()
            self._phase("reverted", error=why)
        except BaseException as e2:  # noqa: BLE001
            e2 = self._explain(e2)
            why2 = e2.message if isinstance(e2, OpsError) else f"{type(e2).__name__}: {e2}"
            self.state["error"] = why
            self.file.save(self.state)
            raise RotationFailed(
                f"rotation failed before the env files were changed ({why}) and reverting failed too ({why2}): "
                f"each value is in either the old key {self.old_fp} or the new key {self.new_fp}; the queue stays "
                "paused",
                hint="fix the cause and rerun the same `aixsss-ops keys rotate` to finish, "
                     "or `aixsss-ops keys rotate --rollback` to go back to the old key") from None
        details = "\n".join(str(x) for x in cause.errors) if isinstance(cause, BadValues) else (
            cause.details if isinstance(cause, OpsError) else None)
        exc = CheckFailed if isinstance(cause, (BadValues, CheckFailed)) else RotationFailed
        raise exc(f"rotation failed before the env files were changed ({why}); every value is decryptable with the "
                  f"old key {self.old_fp} again, the env files are unchanged"
                  + ("; the queue was resumed" if resumed else ""), details=details,
                  hint=cause.hint if isinstance(cause, OpsError) else None) from None

    def _env_steps(self, eng: Engine, res: RotationResult) -> None:
        if self.state.get("phase") in DB_PHASES:
            self.say("step 5: writing the new key to the env files (the old one kept as ..._PREVIOUS)")
            res.env_files = self.hooks.write_env()
            self._phase("env-written")
        try:
            if self.state.get("phase") == "env-written":
                self.say("step 6: restarting api and worker with the new key")
                res.restart = self.hooks.restart(self.say) if self.hooks.restart else None
                self._phase("restarted", restart=res.restart)
            self.say("sweeping values written with the old key during the restart")
            swept = eng.reencrypt(0, 1)
            res.swept = swept.reencrypted
            late, res.verified = self._verify(eng, "verify")
            res.swept += late
            res.queue_resumed = self._resume_queue()
            self._phase("done", swept=res.swept, finished_at=now_iso())
        except BadValues as e:
            raise CheckFailed(f"after the env files changed: {e}; the queue stays paused",
                              details="\n".join(str(x) for x in e.errors)) from None
        except Exception as e:  # noqa: BLE001 - a lock timeout becomes an OpsError, anything else goes on
            if not isinstance(e, OpsError) and not lock_error(e):
                raise
            e = self._explain(e)
            raise RotationFailed(
                f"the env files hold the new key {self.new_fp} and the database is re-encrypted, but the restart "
                f"or the final sweep failed: {e.message}; the queue stays paused",
                hint="fix the cause and rerun `aixsss-ops keys rotate` (it resumes here), "
                     "or `aixsss-ops keys rotate --rollback`", details=e.details) from None
