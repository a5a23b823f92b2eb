"""`aixsss-ops play`: run a playbook (plan first), resume an interrupted run, list playbooks and runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from aixsss_ops.cli.common import State, confirm, state

HELP = """Run a playbook: print its plan, run its steps, record the run.

NAME is a bundled or local playbook (release, rotate-key, restore-drill) or a path to a YAML file.
`play list` lists playbooks, `play runs` lists recorded runs, `play --resume RUN_ID` continues an
interrupted run at its first unfinished step (finished steps never run again)."""


def _parse_vars(items: list[str] | None) -> dict[str, str]:
    from aixsss_ops.errors import UsageError

    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise UsageError(f"--var {item!r}: expected NAME=VALUE")
        out[k.strip()] = v
    return out


def _config_path(st: State):
    return st.config.config_path


def _render_plan(st: State, book, plan: list[dict], variables: dict, to_stdout: bool = False) -> None:
    from aixsss_ops.output import redact, scrubber

    class _Out:
        @staticmethod
        def info(msg: str) -> None:
            if to_stdout:
                st.out.console.print(scrubber.scrub(msg), markup=False)
            else:
                st.out.info(msg)

    out = _Out
    out.info(f"plan of playbook {book.name} ({book.path}):")
    if variables:
        out.info("  vars: " + ", ".join(f"{k}={v!r}" for k, v in redact(variables).items()))
    current = None
    for n, p in enumerate(plan, 1):
        if p["list"] != current:
            current = p["list"]
            if current != "steps":
                out.info(f"  on failure, {current}:")
        flags = [x for x in ("destructive" if p["destructive"] else "", f"timeout {p['timeout_s']:g}s"
                             if p["timeout_s"] else "", f"on failure: {p['on_failure']}"
                             if p["on_failure"] != "abort" else "") if x]
        out.info(f"  {n:>2}. {p['id']}: {p['action']}" + (f" [{', '.join(flags)}]" if flags else ""))
        if p["params"]:
            out.info("      with " + ", ".join(f"{k}={v!r}" for k, v in p["params"].items()))
        if p["when"]:
            out.info(f"      when {p['when']}")


class _Events:
    """Step lines on stderr (a rich progress bar on a terminal); the action's own messages when --verbose."""

    def __init__(self, st: State, total: int):
        self.st, self.out, self.total = st, st.out, total
        self.bar = None
        if not self.out.json_mode and not self.out.quiet and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TimeElapsedColumn(), console=self.out.err, transient=True)
            self.task = self.bar.add_task("playbook", total=total)
            self.bar.start()

    def line(self, msg: str) -> None:
        if self.out.quiet:
            return
        if self.bar:
            from aixsss_ops.output import scrubber

            self.bar.console.print(scrubber.scrub(msg), markup=False)
        else:
            self.out.info(msg)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()

    def __call__(self, kind: str, **k) -> None:
        if kind == "start":
            s = k["step"]
            again = " (again: its process was interrupted)" if k.get("resumed") else ""
            self.line(f"[{k['index'] + 1}] {s['id']}: {s['action']} …{again}")
            if self.bar:
                self.bar.update(self.task, description=f"{s['id']} ({s['action']})")
        elif kind == "say":
            if self.out.verbose or self.bar:
                self.line(f"      {k['message']}")
        elif kind == "skip":
            s = k["step"]
            self.line(f"[{k['index'] + 1}] {s['id']}: skipped ({s['note']})")
            self._advance()
        elif kind == "end_step":
            s = k["step"]
            if s["status"] == "succeeded":
                self.line(f"    {s['id']}: ok ({s['duration_s']:.1f}s)")
            else:
                e = s["error"] or {}
                self.line(f"    {s['id']}: FAILED: {e.get('message')}")
                if e.get("details") and self.out.verbose:
                    self.line(e["details"])
            self._advance()
        elif kind == "rollback":
            self.line(f"step {k['trigger']} failed: running rollback list {k['name']}")
            if self.bar:
                self.bar.update(self.task, total=self.total + len(k["record"]["rollback"]["steps"]))
        elif kind == "resume":
            r = k["record"]
            done = [s["id"] for s in r["steps"] if s["status"] in ("succeeded", "skipped", "failed")]
            self.line(f"resuming run {r['id']}: finished steps not run again: {', '.join(done) or 'none'}")

    def _advance(self) -> None:
        if self.bar:
            self.bar.advance(self.task)


def _show_record(st: State, rec: dict) -> None:
    def human(r):
        rows = []
        for s in r["steps"] + ((r.get("rollback") or {}).get("steps") or []):
            rows.append((s["id"], s["action"], s["status"], "" if s["duration_s"] is None else f"{s['duration_s']:.1f}s",
                         (s["error"] or {}).get("message") or s.get("note") or ""))
        st.out.table(f"run {r['id']}", ["step", "action", "status", "time", "note"], rows)
        st.out.console.print(f"{r['playbook']['name']}: {r['status']}"
                             + (f" in {r['duration_s']:.1f}s" if r.get("duration_s") is not None else ""), markup=False)

    st.out.emit({"ok": rec["status"] == "succeeded", **rec}, human)


def play(
    ctx: typer.Context,
    name: str = typer.Argument(None, metavar="NAME|PATH|list|runs", help="Playbook name or path; `list`, `runs`."),
    var: list[str] = typer.Option(None, "--var", metavar="NAME=VALUE", help="Set a playbook variable (repeatable)."),
    resume: str = typer.Option(None, "--resume", metavar="RUN_ID", help="Continue an interrupted or failed run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and run nothing."),
) -> None:
    from aixsss_ops.errors import UsageError

    st = state(ctx)
    if name == "list" and not (var or resume or dry_run):
        return _list(st)
    if name == "runs" and not (var or resume or dry_run):
        return _runs(st)
    from aixsss_ops import playbook
    from aixsss_ops.playbook import model
    from aixsss_ops.playbook.runner import Runner, RunStore

    store = RunStore(st.config.state)
    if resume:
        if var:
            raise UsageError("--var cannot be combined with --resume: a resumed run keeps its variables")
        rec = store.load(resume)
        if name and playbook.find(name, _config_path(st)) != Path(rec["playbook"]["path"]):
            raise UsageError(f"run {resume} is of playbook {rec['playbook']['path']}, not {name}")
        book = model.load(Path(rec["playbook"]["path"]))
        variables = rec["vars"]
    else:
        if not name:
            raise UsageError("name a playbook (see `aixsss-ops play list`) or pass --resume RUN_ID")
        path = playbook.find(name, _config_path(st))
        book = model.load(path)
        variables = model.resolve_vars(book, _parse_vars(var), dict(os.environ))
    runner = Runner(st.config, book, store)
    plan = runner.plan(variables)
    if dry_run:
        st.out.emit({"dry_run": True, "playbook": book.name, "path": str(book.path), "vars": variables, "plan": plan},
                    lambda d: _render_plan(st, book, plan, variables, to_stdout=True))
        return
    if not st.out.json_mode:
        _render_plan(st, book, plan, variables)
    destructive = [p["id"] for p in plan if p["destructive"] and p["list"] == "steps"]
    if destructive:
        confirm(st, f"run playbook {book.name} (changes: {', '.join(destructive)})?")
    events = _Events(st, len(book.spec.steps))
    runner.events = events
    try:
        rec = runner.resume(resume) if resume else runner.start(variables)
    finally:
        events.close()
    if rec["status"] != "succeeded":
        failure = rec.get("failure") or {}
        _show_record(st, rec)
        st.out.error(f"playbook {book.name} {rec['status'].replace('_', ' ')}: step {failure.get('step')} failed: "
                     f"{failure.get('message')}",
                     f"resume with `aixsss-ops play --resume {rec['id']}`" if rec["status"] == "failed" else None)
        raise typer.Exit(rec["exit_code"] or 1)
    _show_record(st, rec)


def _list(st: State) -> None:
    from aixsss_ops import playbook
    from aixsss_ops.playbook import model

    rows = []
    for p in playbook.available(_config_path(st)):
        try:
            book = model.load(p)
            rows.append({"name": book.name, "path": str(p), "description": book.spec.description,
                         "steps": len(book.spec.steps), "vars": list(book.spec.vars), "valid": True, "error": None})
        except Exception as e:  # noqa: BLE001 - an invalid file is listed with its error
            rows.append({"name": p.stem, "path": str(p), "description": "", "steps": None, "vars": [],
                         "valid": False, "error": getattr(e, "message", str(e))})
    st.out.emit(rows, lambda d: st.out.table(None, ["name", "steps", "vars", "description / error", "path"], [
        (r["name"], r["steps"] or "-", ", ".join(r["vars"]), r["description"] if r["valid"] else r["error"], r["path"])
        for r in d]))


def _runs(st: State) -> None:
    from aixsss_ops.playbook.runner import RunStore

    recs = RunStore(st.config.state).all()
    rows = []
    for r in recs:
        steps = r["steps"] + ((r.get("rollback") or {}).get("steps") or [])
        current = next((s["id"] for s in steps if s["status"] in ("running", "pending")), None)
        rows.append({"id": r["id"], "playbook": r["playbook"]["name"], "status": r["status"],
                     "started_at": r["started_at"], "finished_at": r.get("finished_at"),
                     "duration_s": r.get("duration_s"), "next_step": current,
                     "steps": {s["id"]: s["status"] for s in steps}, "exit_code": r.get("exit_code")})
    st.out.emit(rows, lambda d: st.out.table(None, ["run", "playbook", "status", "started", "next step"], [
        (x["id"], x["playbook"], x["status"], x["started_at"], x["next_step"] or "") for x in d]))



