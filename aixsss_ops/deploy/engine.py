"""deploy, switch, rollback and status on top of the runtime protocol and the proxy.

Every step before the proxy switch only touches the idle color, so any failure there leaves the
live color serving; the idle color is torn down and the failing service's last log lines are returned.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aixsss_ops import appspec, envfile, probes, releases
from aixsss_ops.appspec import API
from aixsss_ops.context.deploystate import Colors, ColorSpec, now_iso, other
from aixsss_ops.context.envgen import follow_queue
from aixsss_ops.deploy.health import Identity, Stability, gate
from aixsss_ops.deploy.lock import DeployLock, LockBusy
from aixsss_ops.errors import CheckFailed, OpsError, UsageError
from aixsss_ops.poll import poll_until
from aixsss_ops.runtime.base import FAILED_STATES, api_port, is_app, unit_name, wait_stopped
from aixsss_ops.stack.manager import Stack, color_spec

Progress = Callable[[str], None]
SETTLE_SECONDS = 1.0  # from the api's last passing check: how long every process of the new color must stay the
# process first seen running (not restarted, not exited) before the gate passes
BackupHook = Callable[[str], str]  # takes a label, returns the id of the restore point it took
RestoreHook = Callable[[str], str]  # takes a backup id, restores its database, returns the backup id


class DeployFailed(OpsError):
    """The new color did not make it; the live color was never touched."""


@dataclass
class DeployResult:
    release: str
    version: str
    color: str | None
    previous_color: str | None
    noop: bool = False
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)
    migrations_applied: list[str] = field(default_factory=list)
    backup_id: str | None = None
    health_checks: int = 0
    switch_seconds: float | None = None
    gate_seconds: float | None = None  # from booting the new color to every process of it ready
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Deployer:
    """Deploys on ``stack``. ``backup``/``restore_db`` are how it takes a pre-deploy backup and restores a database
    for ``rollback --restore-db`` (the use-case layer hands them in); without them it does neither."""

    def __init__(self, stack: Stack, say: Progress | None = None, *, backup: BackupHook | None = None,
                 restore_db: RestoreHook | None = None):
        self.stack = stack
        self.cfg = stack.cfg
        self.say = say or (lambda _m: None)
        self.rt = stack.runtime
        self.lock = DeployLock(stack.layout.deploy_dir)
        self.take_backup = backup
        self.restore_db = restore_db

    # -- helpers --
    def _api_url(self, color: str) -> str:
        return f"http://{self.cfg.host}:{api_port(self.cfg, color)}"

    @property
    def _workers(self) -> tuple[str, ...]:
        """The processes besides the api (ops.toml ``app.processes``): started after its gate, drained first."""
        return appspec.others(self.cfg)

    def _others_of(self, color: str, units: list | None = None) -> tuple[str, ...]:
        """The processes of ``color`` besides the api: those the description names, and any that runs there from
        an earlier description (a role removed, a count lowered since that color was booted). ``units``: the
        runtime's status when the caller has it already (on docker each status lists every container)."""
        names = list(self._workers)
        names += sorted({u.service for u in (self.rt.status() if units is None else units)
                         if u.color == color and is_app(u.service) and u.service != API and u.service not in names})
        return tuple(names)

    def _stop_color(self, color: str) -> None:
        units = [(role, color) for role in (*self._others_of(color), API)]
        for svc, c in units:
            self.rt.stop(svc, c, wait=False)
        longest = max(p.stop_timeout for p in self.cfg.app.processes.values())
        wait_stopped(self.rt, units, max(longest, self.cfg.supervisor.stop_timeout) + 30)

    def _boot(self, color: str, release: releases.Release, state: Colors) -> None:
        """Stop whatever the idle color ran, then start the api of ``color`` from ``release``. Its worker starts
        only once the api passed the gate (``_gate``): an unchecked release never takes a job."""
        self._stop_color(color)
        state.colors[color] = color_spec(release).with_status("booting")
        self.stack.deploy_state.save(state)
        self.rt.define_app(color, release.path, release.version)
        self.rt.prepare_route(color, release.path)
        self.rt.start("api", color)

    def _gate(self, color: str) -> int:
        """The api's readiness ``health_threshold`` times in a row, then its dependencies proven with its own
        settings, then the other processes started and ready, then ``SETTLE_SECONDS`` from the api's last passing
        check with every process still the one first seen running: a process that exited or was restarted (by
        its runtime, between two looks) at any time of it, and any other failure, is a DeployFailed with their
        logs."""
        d = self.cfg.deploy
        watch = Stability()
        watch.watch(unit_name(API, color))

        def alive() -> str | None:
            st = self.rt.state(API, color)
            if st in (*FAILED_STATES, "STOPPED"):
                return f"api-{color} is {st}"
            return watch.check(self._processes(color))

        self.say(f"health gate on {color}: {d.health_threshold} consecutive passes within {d.health_timeout:.0f}s")
        res = gate(lambda: self.stack.ready(API, color), threshold=d.health_threshold, interval=d.health_interval,
                   timeout=d.health_timeout, alive=alive)
        if not res.ok:
            raise DeployFailed(
                f"the {color} color did not pass the health gate after {res.checks} checks "
                f"({res.seconds:.1f}s): {res.last_error}",
                details=self._failure_logs(color),
            )
        passed = time.monotonic()
        self._prove_dependencies(color)
        self._start_workers(color, max(1.0, d.health_timeout - res.seconds), watch)
        self._settle(color, watch, passed + SETTLE_SECONDS)
        return res.checks

    def _processes(self, color: str) -> dict[str, Identity]:
        """The processes of ``color`` as the runtime shows them now (one listing): unit -> (state, pid, start)."""
        now = time.time()
        return {u.unit: (u.state, u.pid, now - u.uptime_s if u.uptime_s is not None else None)
                for u in self.rt.status() if u.color == color and is_app(u.service)}

    def _unstable(self, color: str, why: str) -> DeployFailed:
        return DeployFailed(f"the {color} color is not stable: {why}", details=self._failure_logs(color))

    def _settle(self, color: str, watch: Stability, until: float) -> None:
        """Until the monotonic time ``until`` (and at least once): every process ``watch`` follows is still the one
        first seen running."""
        while True:
            if why := watch.check(self._processes(color)):
                raise self._unstable(color, why)
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.2, left))

    def _prove_dependencies(self, color: str) -> None:
        """An api whose health endpoint only says it is alive must still reach what it needs: a query on its own
        DATABASE_URL and a PING on its own REDIS_URL (from the env file it reads)."""
        from aixsss_ops.dburl import parse_database_url
        from aixsss_ops.queue.conn import connect

        env_file = appspec.env_file_of(API, self.cfg.app.processes[API])
        path = self.stack.layout.env_file(env_file) if env_file else None
        env = envfile.read(path) if path is not None and path.exists() else {}
        try:
            if env.get("DATABASE_URL"):
                with parse_database_url(env["DATABASE_URL"]).connect(timeout=5) as conn:
                    conn.execute("SELECT 1")
            if env.get("REDIS_URL"):
                with connect(env["REDIS_URL"], timeout=3) as r:
                    r.ping()
        except OpsError as e:
            raise DeployFailed(f"api-{color} answers, but the dependencies of its settings do not: {e.message}",
                               hint=e.hint, details=self._failure_logs(color)) from None

    def _stop_limit(self, role: str) -> float:
        spec = appspec.spec_of(self.cfg, role)
        return spec.stop_timeout if spec else self.cfg.supervisor.stop_timeout

    def _await_stopped(self, roles, color: str) -> None:
        """A stop of these processes of ``color`` still in progress (a drain of an earlier switch) ends before they
        are started again: a start during it is lost, and the color would serve with no worker. Bounded by their
        stop timeout (the runtime kills them then) plus a margin; an OpsError naming the one still stopping after."""
        for role in roles:
            if self.rt.state(role, color) != "STOPPING":
                continue
            limit = self._stop_limit(role) + 30
            self.say(f"{role}-{color} is still stopping (its active jobs finish): waiting up to {limit:g}s for it")
            if not wait_stopped(self.rt, [(role, color)], limit):
                raise OpsError(f"{role}-{color} was still stopping after {limit:g}s: it was not started again",
                               hint=f"check 'aixsss-ops stack status', then start it: 'aixsss-ops deploy switch {color}'")

    def _start_workers(self, color: str, timeout: float, watch: Stability) -> None:
        """Start the processes besides the api and wait until each is ready; ``watch`` follows each of them from its
        start, and a process it follows that exited or was restarted meanwhile fails the deploy."""
        pending = list(self._workers)
        self._await_stopped(pending, color)
        for role in pending:
            if self.rt.state(role, color) != "RUNNING":
                self.say(f"api-{color} passed: starting {role}-{color}")
                self.rt.start(role, color)
            watch.watch(unit_name(role, color))

        def ready() -> bool:
            if why := watch.check(self._processes(color)):
                raise self._unstable(color, why)
            for role in list(pending):
                st = self.rt.state(role, color)
                if st in FAILED_STATES:
                    raise DeployFailed(f"{role}-{color} is {st}", details=self._failure_logs(color))
                if self.stack.ready(role, color)[0]:
                    pending.remove(role)
                    self.say(f"{role}-{color} is ready")
            return not pending

        if not poll_until(ready, timeout, interval=0.2):
            role = pending[0]
            raise DeployFailed(f"{role}-{color} was not ready within {timeout:.0f}s: {self.stack.ready(role, color)[1]}",
                               details=self._failure_logs(color))

    def _active_jobs(self) -> set[str] | None:
        """The ids of the queue's active jobs (BullMQ's active list); None when the queue cannot be read."""
        from aixsss_ops.queue.conn import connect
        from aixsss_ops.queue.keys import QueueKeys

        env_file = appspec.env_file_of(API, self.cfg.app.processes[API])
        path = self.stack.layout.env_file(env_file) if env_file else None
        env = envfile.read(path) if path is not None and path.exists() else {}
        if not env.get("REDIS_URL"):
            return None
        try:
            with connect(env["REDIS_URL"], timeout=3) as r:
                return {i.decode() if isinstance(i, bytes) else str(i)
                        for i in r.lrange(QueueKeys(self.cfg.app.queue).active, 0, -1)}
        except Exception:  # noqa: BLE001 - the warning is best effort; the drain itself is done
            return None

    def _drain(self, old: str) -> list[str]:
        """Stop the workers of ``old``, each waited for (its active jobs finish, or the runtime kills it at its
        stop timeout); a warning per worker killed with jobs still active: they run again."""
        warnings = []
        for role in self._others_of(old):
            limit = self._stop_limit(role)
            self.say(f"draining {old}: stopping {role}-{old} (active jobs finish; killed after {limit:g}s)")
            before = self._active_jobs()
            t0 = time.monotonic()
            self.rt.stop(role, old)
            took = time.monotonic() - t0
            after = self._active_jobs()
            left = (before & after) if before is not None and after is not None else set()
            if left and took >= limit - 1:
                warnings.append(
                    f"{len(left)} active job(s) were still running when the drain of {role}-{old} ended at its stop "
                    f"timeout ({limit:g}s): the worker was killed and they will run again (once their lock expires)")
        return warnings

    def _failure_logs(self, color: str) -> str:
        parts = []
        for svc in appspec.roles(self.cfg):
            text = self.rt.logs(svc, color, 30)
            if text:
                parts.append(f"--- last lines of {svc}-{color} ---\n{text}")
        return "\n".join(parts)

    def _switch(self, color: str) -> float:
        """Point the proxy at ``color``; returns seconds from the switch to the first answer from that color."""
        self.say(f"switching the proxy to {color}")
        t0 = time.monotonic()
        self.rt.route(color)

        def answers() -> bool:  # an app whose health names no color: any answer after the atomic switch is its
            ok, body = probes.api_health(f"{self.stack.url}/api/health", timeout=1.0)
            return ok and body.get("color", color) == color

        if not poll_until(answers, 30, interval=0.005):
            raise OpsError(f"the proxy did not answer from {color} within 30s after the switch")
        return round(time.monotonic() - t0, 4)

    def _hooks(self, phase: str, env: dict[str, str]) -> list[str]:
        folder = self.cfg.resolve(self.cfg.deploy.hooks_dir) / phase
        if not folder.is_dir():
            return []
        ran = []
        for hook in sorted(p for p in folder.iterdir() if p.is_file() and os.access(p, os.X_OK)):
            self.say(f"{phase} hook {hook.name}")
            r = subprocess.run([str(hook)], env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                raise DeployFailed(
                    f"{phase} hook {hook.name} exited {r.returncode}", details=(r.stdout + r.stderr).strip()[-2000:]
                )
            ran.append(hook.name)
        return ran

    def validate_env(self) -> None:
        """The env files of api, worker and web against their contracts (``EnvInvalid`` lists every problem)."""
        from aixsss_ops.contracts.env import load_service_env

        for svc in ("api", "worker", "web"):
            load_service_env(svc, envfile.read(self.stack.layout.env_file(svc)), bundled=svc != "web")

    def _is_live(self, state: Colors, release: releases.Release) -> bool:
        spec = state.spec(state.active)
        return bool(spec and spec.release == release.id and self.rt.state("api", state.active) == "RUNNING")

    @staticmethod
    def _noop(res: DeployResult, release: releases.Release, live: str) -> DeployResult:
        res.noop, res.color, res.previous_color = True, live, live
        res.plan = [f"release {release.id} is already live on {live}: nothing to do"]
        return res

    def _state(self) -> Colors:
        state = self.stack.colors()
        state.active = self.stack.live_color() or state.active
        return state

    # -- a deploy that died --
    def recover(self) -> str | None:
        """Tear down a color a killed deploy left booting (its release never passed the gate), so nothing unchecked
        keeps running; None when there is none, or when a live deploy holds the lock (its color boots for real)."""
        if not self.interrupted():
            return None
        try:
            self.lock.acquire(0, {"action": "recover"})
        except LockBusy:
            return None
        try:
            return self._recover_locked(self._state())
        finally:
            self.lock.release()

    def interrupted(self) -> list[str]:
        """Colors a deploy left ``booting`` whose deploy no longer runs (the lock is free)."""
        state = self.stack.deploy_state.load()
        if not state or self.lock.info().held:
            return []
        return [c for c, spec in state.colors.items() if spec.status == "booting" and c != state.active]

    def _recover_locked(self, state: Colors) -> str | None:
        booting = [c for c, spec in state.colors.items() if spec.status == "booting" and c != state.active]
        if not booting:
            return None
        for color in booting:
            spec = state.colors[color]
            self.say(f"a deploy of {spec.release} to {color} was killed before its health gate passed: "
                     f"stopping {color}")
            self._stop_color(color)
            state.colors[color] = spec.with_status("failed")
            self.stack.deploy_state.save(state)
            self.stack.deploy_state.record({"at": now_iso(), "action": "deploy", "release": spec.release,
                                            "version": spec.version, "color": color, "previous_color": state.active,
                                            "outcome": "interrupted", "actor": "recovery", "migrations_applied": [],
                                            "backup_id": None, "seconds": 0})
        return (f"stopped {', '.join(booting)}: the deploy that booted it was killed before its health gate passed "
                f"({state.colors[booting[0]].release} never served)")

    # -- deploy --
    def deploy(
        self,
        *,
        version: str | None = None,
        source: Path | None = None,
        allow_destructive: bool = False,
        dry_run: bool = False,
        force: bool = False,
        actor: str = "cli",
        release_id: str | None = None,
    ) -> DeployResult:
        """Deploy a release to the idle color. ``force`` redeploys the live release too (a blue/green
        restart, e.g. to pick up changed env files without a moment of downtime); ``release_id``: an existing
        release, built nothing."""
        t0 = time.monotonic()
        if release_id:
            release, created = releases.find(self.stack.layout.releases, release_id), False
        else:
            version = self.cfg.app.version if version is None else version
            releases.check_version(version)
            release, created = releases.build(source or self.cfg.app_source, version,
                                              self.stack.layout.releases, dry_run=dry_run, steps=self.cfg.app.build,
                                              say=self.say, builder=self.rt.build_release)
        if created:
            self.say(f"built release {release.id}")
        state = self._state()
        live = state.active
        target = other(live)
        res = DeployResult(release.id, release.version, target, live, dry_run=dry_run)
        if not force and self._is_live(state, release):
            return self._noop(res, release, live)
        res.plan = [
            "take the deploy lock",
            "validate the env of api, worker and web",
            "run pre-deploy hooks",
            *(["take a pre-deploy backup"] if self._backs_up else []),
            f"apply pending migrations from {release.id}",
            *follow_queue(self.cfg, self.stack.layout, dry_run=True).lines,
            f"boot api-{target} and worker-{target} from {release.id}",
            f"health gate on {self._api_url(target)}",
            f"switch the proxy from {live} to {target}",
            f"stop worker-{live} gracefully; keep api-{live} warm for {self.cfg.deploy.warm_minutes:g} min",
            "record the release, run post-deploy hooks, smoke check through the proxy",
        ]
        if dry_run and not release.path.is_dir():  # not built yet: its migrations exist only after the build
            built = (f"build release {release.id} from {source or self.cfg.app_source}"
                     + (f" ({len(self.cfg.app.build)} build step(s))" if self.cfg.app.build else ""))
            step = next(i for i, p in enumerate(res.plan) if p.startswith("apply pending migrations"))
            res.plan[step] += ": checked after the build (the release is not built yet)"
            res.plan.insert(0, built)
            return res
        if dry_run:
            from aixsss_ops.migrate import deploy as migrate_deploy

            plan = migrate_deploy(self.stack.app_database_url(), appspec.migrations_dir(self.cfg, release.path),
                                  dry_run=True, allow_destructive=allow_destructive)
            step = next(i for i, p in enumerate(res.plan) if p.startswith("apply pending migrations"))
            res.plan[step] += f": {', '.join(plan.plan) or 'none pending'}"
            res.warnings += [f"migration {f.migration}: {f.message}" for f in plan.findings] + plan.blockers
            return res

        with self.lock:
            self.lock.acquire(self.cfg.deploy.lock_timeout, {"action": "deploy", "version": release.id}, self.say)
            state = self._state()  # what the deploy that held the lock before left
            if (note := self._recover_locked(state)) is not None:
                res.warnings.append(note)
            live, target = state.active, other(state.active)
            if not force and self._is_live(state, release):
                return self._noop(res, release, live)
            res.color, res.previous_color = target, live
            self.validate_env()
            hook_env = {
                "AIXSSS_RELEASE": release.id,
                "AIXSSS_VERSION": release.version,
                "AIXSSS_COLOR": target,
                "AIXSSS_PREVIOUS_COLOR": live,
                "AIXSSS_PREVIOUS_VERSION": state.spec(live).version if state.spec(live) else "",
            }
            self._hooks("pre-deploy", hook_env)
            self._check_migrations(release, allow_destructive)  # refused before anything is taken or changed
            res.backup_id = self._backup(release)
            res.migrations_applied = self._migrate(release, allow_destructive)
            queue = follow_queue(self.cfg, self.stack.layout)  # the release boots on ops.toml's app.queue
            res.warnings += queue.lines
            self.say(f"booting {target} from {release.id}")
            try:
                booted = time.monotonic()
                self._boot(target, release, state)
                res.health_checks = self._gate(target)
                res.gate_seconds = round(time.monotonic() - booted, 3)
                self.stack.record_description(release.id)  # what a rollback or switch to it boots with
            except BaseException:
                self.say(f"tearing {target} down; {live} keeps serving")
                queue.restore()
                self._stop_color(target)
                state.colors[target] = color_spec(release).with_status("failed")
                self.stack.deploy_state.save(state)
                self._record(res, "failed", t0, actor)
                raise
            res.switch_seconds = self._switch(target)
            state.active = target
            state.colors[target] = state.colors[target].with_status("live")
            if live in state.colors:
                state.colors[live] = state.colors[live].with_status("warm", _later(self.cfg.deploy.warm_minutes))
            self.stack.deploy_state.save(state)
            self._record(res, "live", t0, actor)  # before the drain: a deploy killed while draining went live
            res.warnings += self._drain(live)
            if self.cfg.deploy.warm_minutes <= 0:
                self.rt.stop("api", live)
            try:
                self._hooks("post-deploy", hook_env)
                self._smoke(release)
            except OpsError as e:
                res.warnings.append(f"after the switch: {e.message}")
        res.seconds = round(time.monotonic() - t0, 3)
        return res

    def _check_migrations(self, release: releases.Release, allow_destructive: bool) -> None:
        """What the migrations of ``release`` would meet (the ledger, drift, lint): refused here, before the
        pre-deploy backup, with the same error the real run would give."""
        from aixsss_ops.migrate import deploy as migrate_deploy

        plan = migrate_deploy(self.stack.app_database_url(), appspec.migrations_dir(self.cfg, release.path), dry_run=True,
                              allow_destructive=allow_destructive)
        if plan.blockers:
            raise CheckFailed(plan.blockers[0] if len(plan.blockers) == 1
                              else f"{len(plan.blockers)} problems stop the deploy: {plan.blockers[0]}",
                              details="\n".join(plan.blockers[1:]) or None)

    def _migrate(self, release: releases.Release, allow_destructive: bool) -> list[str]:
        from aixsss_ops.migrate import deploy as migrate_deploy

        self.say("applying pending migrations")
        result = migrate_deploy(
            self.stack.app_database_url(),
            appspec.migrations_dir(self.cfg, release.path),
            allow_destructive=allow_destructive,
            statement_lock_timeout=self.cfg.deploy.migration_statement_lock_timeout,
            progress=self.say,
        )
        return list(result.applied)

    @property
    def _backs_up(self) -> bool:
        return self.cfg.deploy.backup and self.take_backup is not None

    def _backup(self, release: releases.Release) -> str | None:
        if not self._backs_up:
            return None
        self.say("taking a pre-deploy backup")
        return self.take_backup(f"pre-deploy {release.id}")

    def _smoke(self, release: releases.Release) -> None:
        ok, body = probes.api_health(f"{self.stack.url}/api/health")
        if not ok or body.get("version", release.version) != release.version:
            raise CheckFailed(f"smoke check through the proxy: expected version {release.version}, got {body}")

    def _record(self, res: DeployResult, outcome: str, t0: float, actor: str) -> None:
        self.stack.deploy_state.record(
            {
                "at": now_iso(),
                "action": "deploy",
                "release": res.release,
                "version": res.version,
                "color": res.color,
                "previous_color": res.previous_color,
                "outcome": outcome,
                "actor": actor,
                "migrations_applied": res.migrations_applied,
                "backup_id": res.backup_id,
                "seconds": round(time.monotonic() - t0, 3),
            }
        )

    # -- switch / rollback --
    def switch(self, color: str | None = None, actor: str = "cli") -> DeployResult:
        t0 = time.monotonic()
        with self.lock:
            self.lock.acquire(self.cfg.deploy.lock_timeout, {"action": "switch", "version": color or "the idle color"},
                              self.say)
            state = self._state()  # read under the lock: what a deploy that held it before left
            live = state.active
            target = color or other(live)
            spec = state.spec(target)
            if spec is None:
                raise UsageError(f"nothing was ever deployed to {target}")
            res = DeployResult(spec.release, spec.version, target, live)
            if target == live:
                res.noop = True
                res.plan.append(f"{live} is already live")
                return res
            with self.stack.as_deployed(spec.release) as note:  # the processes its release was deployed with
                if self._ensure_running(target, spec):
                    self._warn_undescribed(res, note)
                res.health_checks = self._gate(target)
                res.switch_seconds = self._switch(target)
            self._mark_switched(state, target, live)
            self._record(res, "live", t0, actor)  # before the drain: a switch killed while draining went live
            res.warnings += self._drain(live)
        res.seconds = round(time.monotonic() - t0, 3)
        return res

    def rollback(self, to: str | None = None, restore_db: str | None = None, actor: str = "cli") -> DeployResult:
        """Back to ``to`` (default: the previous release); ``restore_db`` then restores that backup's database
        (api and worker are stopped while it is swapped in), for migrations that are not backward compatible."""
        if to is not None:
            releases.find(self.stack.layout.releases, to)  # an unknown release is refused before the lock
        t0 = time.monotonic()
        with self.lock:
            self.lock.acquire(self.cfg.deploy.lock_timeout, {"action": "rollback", "version": to or "the previous"},
                              self.say)
            state = self._state()  # read under the lock: what a deploy that held it before left
            live = state.active
            idle = other(live)
            idle_spec = state.spec(idle)
            live_spec = state.spec(live)
            if to is None:
                if not idle_spec or idle_spec.status == "failed":
                    live_release = live_spec.release if live_spec else None
                    prev = next((h for h in reversed(self.stack.deploy_state.history())
                                 if h["outcome"] == "live" and h["release"] != live_release), None)
                    if prev is None:
                        raise CheckFailed("there is no previous release to roll back to",
                                          hint="see 'aixsss-ops deploy releases'")
                    to = prev["release"]
                else:
                    to = idle_spec.release
            release = releases.find(self.stack.layout.releases, to)
            if live_spec and live_spec.release == release.id and self.rt.state(API, live) == "RUNNING":
                res = DeployResult(release.id, release.version, live, live, noop=True)
                res.plan.append(f"{release.id} on {live} is already live: nothing to do")
                return res
            res = DeployResult(release.id, release.version, idle, live)
            res.warnings += self._migrations_since(release.id)
            warm = idle_spec and idle_spec.release == release.id and self.rt.state("api", idle) == "RUNNING"
            with self.stack.as_deployed(release.id) as note:  # the processes the release was deployed with
                if warm:
                    res.health_checks = self._quick_gate(idle)
                    self._await_stopped(self._workers, idle)  # before the switch: the live color keeps its workers
                else:
                    self.say(f"{idle} is cold: booting {release.id} on it")
                    self._warn_undescribed(res, note)
                    try:
                        self._boot(idle, release, state)
                        res.health_checks = self._gate(idle)
                    except BaseException:
                        self._stop_color(idle)
                        raise
                res.switch_seconds = self._switch(idle)
                units = self.rt.status()  # one listing for both colors' processes below
                if warm:  # after the switch, which they must not delay: the processes the warm color was booted with
                    defined = {u.service for u in units if u.color == idle}
                    for role in (r for r in self._workers if r in defined):
                        self.say(f"{idle} is warm with {release.id}: starting {role}-{idle}")
                        self.rt.start(role, idle, detach=True)  # the engine carries it through; `stack status` shows it
            self._after_switch(state, idle, live, drain_wait=bool(restore_db), units=units)
            if restore_db:
                if self.restore_db is None:
                    raise UsageError("this deployer cannot restore a database")
                self.say(f"restoring the database from backup {restore_db}")
                res.backup_id = self.restore_db(restore_db)
            self.stack.deploy_state.record(
                {
                    "at": now_iso(),
                    "action": "rollback",
                    "release": release.id,
                    "version": release.version,
                    "color": idle,
                    "previous_color": live,
                    "outcome": "live",
                    "actor": actor,
                    "warm": bool(warm),
                    "migrations_applied": [],
                    "backup_id": None,
                    "restored_backup": res.backup_id,
                    "seconds": round(time.monotonic() - t0, 3),
                }
            )
        res.seconds = round(time.monotonic() - t0, 3)
        return res

    def _quick_gate(self, color: str) -> int:
        res = gate(lambda: self.stack.ready(API, color), threshold=1, interval=0.05,
                   timeout=self.cfg.deploy.health_timeout)
        if not res.ok:
            raise DeployFailed(f"the warm {color} api is not healthy: {res.last_error}", details=self._failure_logs(color))
        return res.checks

    def _ensure_running(self, color: str, spec: ColorSpec) -> bool:
        """The api of ``color`` (its worker starts once the api passed the gate). One that does not run is started
        from the color defined again, for its release, with the description in effect (``Stack.as_deployed``);
        True then."""
        if self.rt.state(API, color) == "RUNNING":
            return False
        self.rt.define_app(color, spec.path, spec.version)
        self.rt.start(API, color)
        return True

    def _warn_undescribed(self, res: DeployResult, note: str | None) -> None:
        """A color booted with the description of ops.toml, its release having no record of its own: said now, and
        among the result's warnings."""
        if note:
            self.say(f"warning: {note}")
            res.warnings.append(note)

    def _mark_switched(self, state: Colors, target: str, old: str) -> None:
        """Record ``target`` live and ``old`` warm."""
        state.active = target
        state.colors[target] = state.colors[target].with_status("live")
        if old in state.colors:
            state.colors[old] = state.colors[old].with_status("warm", _later(self.cfg.deploy.warm_minutes))
        self.stack.deploy_state.save(state)

    def _after_switch(self, state: Colors, target: str, old: str, drain_wait: bool = True,
                      units: list | None = None) -> None:
        """Record ``target`` live and ``old`` warm, and drain ``old``'s workers (their active jobs finish). Without
        ``drain_wait`` (a rollback) the runtime stops them on its own, SIGKILL after their stop timeout, and the
        command does not wait for it."""
        self._mark_switched(state, target, old)
        for role in self._others_of(old, units):
            if not drain_wait:
                spec = appspec.spec_of(self.cfg, role)
                limit = spec.stop_timeout if spec else self.cfg.supervisor.stop_timeout
                self.say(f"draining {role}-{old} (its active jobs finish; stopped within {limit:g}s)")
            self.rt.stop(role, old, wait=drain_wait)

    def _migrations_since(self, release_id: str) -> list[str]:
        hist = self.stack.deploy_state.history()
        # the first release (from `stack up`) has no record: everything recorded came after it
        idx = max((i for i, h in enumerate(hist) if h["release"] == release_id and h["outcome"] == "live"), default=-1)
        later = [m for h in hist[idx + 1 :] for m in h.get("migrations_applied", [])]
        if not later:
            return []
        backup = next((h["backup_id"] for h in hist[idx + 1 :] if h.get("backup_id")), None)
        offer = f"rollback --restore-db {backup}" if backup else "rollback --restore-db BACKUP_ID"
        return [
            f"migrations applied since {release_id} stay in the database: {', '.join(later)}; "
            f"if they are not backward compatible, restore the pre-deploy backup ({offer})"
        ]

    # -- status --
    def status(self, recover: bool = True) -> dict:
        """Both colors, the proxy's target and the lock. ``recover``: first tear down what a killed deploy left
        booting (``recovered`` says what was done); without it such a color is listed under ``interrupted``."""
        if self.stack.deploy_state.load() is None:
            raise CheckFailed("nothing was deployed yet: the stack was never brought up",
                              hint="start it with 'aixsss-ops stack up'")
        recovered = self.recover() if recover else None
        interrupted = [] if recover else self.interrupted()
        state = self._state()
        saved = self.stack.deploy_state.load()
        intended = saved.active if saved else None
        units = {u.unit: u for u in self.rt.status()}
        colors = {}
        for color in ("blue", "green"):
            spec = state.spec(color)
            if not spec:
                continue
            svc = {}
            for name in appspec.roles(self.cfg):
                u = units.get(f"{name}-{color}")
                svc[name] = {
                    "state": u.state if u else "ABSENT",
                    "pid": u.pid if u else None,
                    "uptime_s": u.uptime_s if u else None,
                    **({"replicas": u.replicas} if u and u.replicas else {}),
                }
            if svc[API]["state"] == "RUNNING":
                svc[API]["healthy"] = self.stack.ready(API, color)[0]
            status = spec.status
            if status == "warm" and svc["api"]["state"] != "RUNNING":
                status = "cold"  # its api was stopped (e.g. by a key rotation): a rollback boots it again
            colors[color] = {**spec.to_dict(), "status": status, "services": svc}
        lock = self.lock.info()
        return {
            "active": state.active,
            "proxy_target": self.stack.live_color(),
            "intended_active": intended,
            "consistent": intended in (None, self.stack.live_color()),
            "colors": colors,
            "lock": {"held": lock.held, "holder": lock.holder, "stale_note": lock.stale_note},
            "recovered": recovered,
            "interrupted": interrupted,
            "proxy_url": self.stack.url,
        }


def _later(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat(timespec="seconds")
