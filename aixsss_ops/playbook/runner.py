"""Plan, run and resume a playbook. Each run is recorded in ``<state>/playbooks/runs/<run_id>.json``, written
atomically before and after every step, so a run killed at any point (SIGKILL included) can be resumed at its
first unfinished step; finished steps are never run again."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.fsutil import atomic_write_json, flock_held, read_json
from aixsss_ops.output import is_secret_name, redact, scrubber
from aixsss_ops.playbook import child, expr
from aixsss_ops.playbook.actions import REGISTRY, ActionContext, jsonable
from aixsss_ops.playbook.model import ABORT, CONTINUE, Playbook, StepSpec

FINISHED = ("succeeded", "failed", "skipped")
ENDED = ("succeeded", "failed", "rolled_back", "rollback_failed")
Events = Callable[..., None]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class RunStore:
    def __init__(self, state_dir: Path):
        self.dir = state_dir / "playbooks" / "runs"

    def path(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise UsageError(f"invalid run id {run_id!r}")
        return self.dir / f"{run_id}.json"

    def new_id(self, name: str) -> str:
        return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{name}-{secrets.token_hex(2)}"

    def save(self, record: dict) -> None:
        """Written with every secret the scrubber knows masked (the variables stay: a resume needs them)."""
        record["updated_at"] = now_iso()
        atomic_write_json(self.path(record["id"]), {**scrub_data(record), "vars": record.get("vars")}, 0o600)

    def load(self, run_id: str) -> dict:
        rec = read_json(self.path(run_id))
        if rec is None:
            raise UsageError(f"no run {run_id!r} in {self.dir}", hint="see `aixsss-ops play runs`")
        return rec

    def all(self) -> list[dict]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob("*.json")):
            rec = read_json(p)
            if isinstance(rec, dict):
                if rec.get("status") == "running" and not self.held(rec["id"]):
                    rec["status"] = "interrupted"
                out.append(rec)
        return out

    def lock(self, run_id: str) -> int:
        """An exclusive flock for the duration of a run (released by the kernel when the process dies)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / f"{run_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"run {run_id} is being run by another process") from None
        return fd

    def held(self, run_id: str) -> bool:
        return flock_held(self.dir / f"{run_id}.lock")


def _step_record(step: StepSpec, where: str) -> dict:
    act = REGISTRY[step.action]
    return {"id": step.id, "action": step.action, "list": where, "destructive": act.destructive,
            "status": "pending", "attempts": 0, "started_at": None, "finished_at": None, "duration_s": None,
            "output": None, "error": None, "note": None}


def timeout_of(step: StepSpec) -> float | None:
    return step.timeout if step.timeout is not None else REGISTRY[step.action].timeout


class Runner:
    def __init__(self, cfg, book: Playbook, store: RunStore, events: Events | None = None,
                 environ: dict[str, str] | None = None):
        self.cfg = cfg
        self.book = book
        self.store = store
        self.events = events or (lambda *_a, **_k: None)
        self.environ = dict(os.environ if environ is None else environ)
        scrubber.add(*env_secrets(book, self.environ))

    # -- context for `when` and ${...} --
    def context(self, record: dict, failure: dict | None = None) -> dict[str, Any]:
        steps = {}
        for s in record["steps"] + ((record.get("rollback") or {}).get("steps") or []):
            steps[s["id"]] = {"status": s["status"], "output": s["output"],
                              "error": (s["error"] or {}).get("message"), "duration_s": s["duration_s"],
                              "succeeded": s["status"] == "succeeded", "failed": s["status"] == "failed",
                              "skipped": s["status"] == "skipped"}
        failed = any(s["status"] == "failed" for s in record["steps"])
        return {"vars": record["vars"], "steps": steps, "env": self.environ,
                "run": {"id": record["id"], "playbook": record["playbook"]["name"], "failed": failed},
                "failure": failure or record.get("failure") or {}}

    # -- the plan --
    def plan(self, variables: dict[str, Any]) -> list[dict]:
        """Every step with its parameters rendered as far as they are known before the run."""
        fake = {"id": "(dry run)", "playbook": {"name": self.book.name}, "vars": variables, "steps": []}
        ctx = self.context(fake)
        out = []
        for where, steps in self.book.step_lists().items():
            for step in steps:
                act = REGISTRY[step.action]
                params = {}
                for k, v in step.params.items():
                    try:
                        params[k] = expr.render(v, ctx) if not _reads_steps(v) else f"{v} (known when it runs)"
                    except expr.ExprError as e:
                        params[k] = f"{v} ({e})"
                when = None
                if step.when is not None:
                    x = expr.parse(step.when)
                    when = step.when
                    if not any(p[0] in ("steps", "failure") for p in x.paths()):
                        with contextlib.suppress(expr.ExprError):
                            when += " (true)" if x.evaluate(ctx) else " (false: will be skipped)"
                out.append({"list": where, "id": step.id, "action": step.action, "summary": act.summary,
                            "params": redact(params), "when": when, "destructive": act.destructive,
                            "timeout_s": timeout_of(step), "on_failure": step.on_failure})
        return scrub_data(out)

    # -- running --
    def start(self, variables: dict[str, Any]) -> dict:
        run_id = self.store.new_id(self.book.name)
        record = {
            "id": run_id, "status": "running", "phase": "main", "started_at": now_iso(), "finished_at": None,
            "playbook": {"name": self.book.name, "path": str(self.book.path), "sha256": self.book.sha256},
            "vars": variables, "host": socket.gethostname(), "pid": os.getpid(),
            "processes": [{"pid": os.getpid(), "started_at": now_iso(), "resume": False}],
            "steps": [_step_record(s, "steps") for s in self.book.spec.steps],
            "rollback": None, "failure": None, "aborted_at": None, "exit_code": None, "duration_s": None,
        }
        fd = self.store.lock(run_id)
        try:
            self.store.save(record)
            return scrub_data(self._execute(record))
        finally:
            os.close(fd)

    def resume(self, run_id: str) -> dict:
        fd = self.store.lock(run_id)
        try:
            record = self.store.load(run_id)
            if record["playbook"]["sha256"] != self.book.sha256:
                raise UsageError(f"{self.book.path} changed since run {run_id} started",
                                 hint="restore the playbook as it was, or start a new run")
            if record["status"] in ("succeeded", "rolled_back"):
                raise UsageError(f"run {run_id} already ended: {record['status']}")
            if record["status"] in ("failed", "rollback_failed") and record.get("aborted_at"):
                for s in self._all_steps(record):
                    if s["id"] == record["aborted_at"]:
                        s.setdefault("previous_errors", []).append(s["error"])
                        s["status"], s["error"] = "pending", None
                record["aborted_at"] = None
            record["status"] = "running"
            record["finished_at"] = record["exit_code"] = None
            record["pid"] = os.getpid()
            record["processes"].append({"pid": os.getpid(), "started_at": now_iso(), "resume": True})
            for s in self._all_steps(record):
                if s["status"] == "running":
                    s["resumed"] = True
            self.store.save(record)
            self.events("resume", record=record)
            return scrub_data(self._execute(record))
        finally:
            os.close(fd)

    @staticmethod
    def _all_steps(record: dict) -> list[dict]:
        return record["steps"] + ((record.get("rollback") or {}).get("steps") or [])

    def _execute(self, record: dict) -> dict:
        t0 = time.monotonic()
        specs = {s.id: s for steps in self.book.step_lists().values() for s in steps}
        try:
            if record["phase"] == "main":
                for rec in record["steps"]:
                    if rec["status"] in FINISHED:
                        continue
                    step = specs[rec["id"]]
                    if self._run_step(record, step, rec) != "failed" or step.on_failure == CONTINUE:
                        continue
                    failure = {"step": rec["id"], "action": rec["action"], **(rec["error"] or {})}
                    record["failure"] = failure
                    if step.on_failure == ABORT:
                        return self._end(record, "failed", rec, t0)
                    record["phase"] = "rollback"
                    record["rollback"] = {"name": step.on_failure, "trigger": rec["id"],
                                          "steps": [_step_record(s, f"rollbacks.{step.on_failure}")
                                                    for s in self.book.spec.rollbacks[step.on_failure]]}
                    self.store.save(record)
                    break
                else:
                    return self._end(record, "succeeded", None, t0)
            rb = record["rollback"]
            self.events("rollback", name=rb["name"], trigger=rb["trigger"], record=record)
            for rec in rb["steps"]:
                if rec["status"] in FINISHED:
                    continue
                step = specs[rec["id"]]
                if self._run_step(record, step, rec) == "failed" and step.on_failure != CONTINUE:
                    return self._end(record, "rollback_failed", rec, t0)
            trigger = next(s for s in record["steps"] if s["id"] == rb["trigger"])
            return self._end(record, "rolled_back", trigger, t0, aborted=False)
        except KeyboardInterrupt:
            record["status"] = "interrupted"
            self.store.save(record)
            raise

    def _end(self, record: dict, status: str, failed: dict | None, t0: float, aborted: bool = True) -> dict:
        record["status"] = status
        record["finished_at"] = now_iso()
        record["duration_s"] = round(time.monotonic() - t0, 3)
        record["exit_code"] = 0 if failed is None else int((failed["error"] or {}).get("exit_code") or 1)
        if failed is not None and aborted:
            record["aborted_at"] = failed["id"]
        self.store.save(record)
        self.events("end", record=record)
        return record

    def _run_step(self, record: dict, step: StepSpec, rec: dict) -> str:
        ctx = self.context(record)
        index = next(i for i, s in enumerate(self._all_steps(record)) if s["id"] == rec["id"])
        if step.when is not None:
            try:
                go = expr.parse(step.when).evaluate(ctx)
            except expr.ExprError as e:
                return self._fail(record, rec, OpsError(f"when: {e}"))
            if not go:
                rec["status"], rec["note"] = "skipped", f"when {step.when!r} is false"
                rec["finished_at"] = now_iso()
                self.store.save(record)
                self.events("skip", step=rec, index=index)
                return "skipped"
        act = REGISTRY[step.action]
        try:
            params = {k: expr.render(v, ctx) for k, v in step.params.items()}
            params = _typed(step, params)
        except (expr.ExprError, UsageError) as e:
            return self._fail(record, rec, UsageError(f"step {step.id}: {e}"))
        resumed = bool(rec.pop("resumed", False))
        rec["status"], rec["started_at"], rec["finished_at"] = "running", now_iso(), None
        rec["attempts"] += 1
        rec["params"] = jsonable(redact(params))
        self.store.save(record)
        self.events("start", step=rec, index=index, resumed=resumed)
        actx_args = {"cfg": self.cfg, "run_id": record["id"], "step_id": step.id, "resumed": resumed}
        t0 = time.monotonic()

        def work(say):
            actx = ActionContext(say=say, **actx_args)
            return jsonable(act.fn(actx, **params))

        def started(pid: int) -> None:
            rec["pid"] = pid
            self.store.save(record)

        res = child.call(work, timeout_of(step), lambda m: self.events("say", step=rec, message=m), on_start=started)
        rec["duration_s"] = round(time.monotonic() - t0, 3)
        rec["finished_at"] = now_iso()
        if res["ok"]:
            rec["status"], rec["output"], rec["error"] = "succeeded", redact(res["output"]), None
        else:
            rec["status"], rec["error"] = "failed", res["error"]
        self.store.save(record)
        self.events("end_step", step=rec, index=index)
        return rec["status"]

    def _fail(self, record: dict, rec: dict, e: OpsError) -> str:
        rec["status"], rec["error"], rec["finished_at"] = "failed", child.error_dict(e), now_iso()
        self.store.save(record)
        self.events("end_step", step=rec, index=0)
        return "failed"


def env_secrets(book: Playbook, environ: dict[str, str]) -> list[str]:
    """The values of the secret-named environment variables the playbook's expressions read (``${env.X}``,
    ``when: env.X``; all of them when an expression reads ``env`` whole): the scrubber masks them everywhere."""
    names: set[str] = set()
    for steps in book.step_lists().values():
        for step in steps:
            try:
                exprs = [expr.parse(step.when)] if step.when is not None else []
                exprs += [x for v in step.params.values() for x in expr.template_exprs(v)]
            except expr.ExprError:
                continue
            for x in exprs:
                for ref in x.paths():
                    if ref[0] == "env":
                        names.update(environ if len(ref) == 1 else [str(ref[1])])
    return [environ[n] for n in sorted(names) if n in environ and is_secret_name(n)]


def scrub_data(data: Any) -> Any:
    """A deep copy of ``data`` with every secret value the scrubber knows masked in its strings."""
    if isinstance(data, str):
        return scrubber.scrub(data)
    if isinstance(data, dict):
        return {scrubber.scrub(k) if isinstance(k, str) else k: scrub_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [scrub_data(v) for v in data]
    return data


def _reads_steps(value: Any) -> bool:
    return any(p[0] in ("steps", "failure") for x in expr.template_exprs(value) for p in x.paths())


def _typed(step: StepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters after interpolation, checked against the action's types; null means "use the default"."""
    from aixsss_ops.validate import BOOL_WORDS, ValidationError, convert, located

    act = REGISTRY[step.action]
    out = {}
    for k, v in params.items():
        p = act.params[k]
        if v is None or v == "":
            if p.required:
                raise UsageError(f"parameter {k} is empty")
            continue
        if p.type is bool and isinstance(v, str) and v.strip().lower() in BOOL_WORDS:
            v = BOOL_WORDS[v.strip().lower()]  # an interpolated "yes", "off", ...
        try:
            out[k] = convert(v, p.type)  # lax: "5" is 5 for an int, "2.5" is 2.5 for a float
        except ValidationError as e:
            raise UsageError(f"parameter {k}={v!r}: {located(e, p.type, v)[1]}") from None
    return out
