"""`aixsss-ops keys`: the provider-key encryption key — generate, check, rotate. Thin: parse, confirm, call, render."""

from __future__ import annotations

import os
import signal
import sys

import typer

from aixsss_ops.cli.common import State, confirm, state

app = typer.Typer(help="The API_KEY_ENCRYPTION_KEY: generate, check every stored provider key, rotate without "
                       "losing a secret or a job.", no_args_is_help=True)

DatabaseUrl = typer.Option(None, "--database-url", help="PostgreSQL URL (default: DATABASE_URL, the env files, then "
                                                        "the embedded stack).", show_default=False)
Workers = typer.Option(None, "--workers", min=1, help="Crypto processes (default: the CPU count, at most 4).",
                       show_default=False)


def _read_key(value: str | None) -> str | None:
    """``-`` reads the key from stdin (keeps it out of the process list and shell history)."""
    if value != "-":
        return value
    return sys.stdin.readline().rstrip("\r\n")


class _Bar:
    """A rich progress bar per phase on a terminal (rows done); nothing otherwise."""

    def __init__(self, st: State):
        self.bar = st.out.progress()
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def __call__(self, task: str, n: int, total: int | None) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.bar.add_task(f"{task} (rows)", total=total)
        self.bar.update(self.tasks[task], advance=n)


def _sigterm_interrupts(interrupt=lambda: None) -> None:
    """SIGTERM behaves like Ctrl-C, so a rotation stopped before its env step reverts cleanly: ``interrupt`` (the
    rotation's: it cancels its writes waiting for a row lock), then KeyboardInterrupt, in this process only. A process
    forked from it (a pool worker, before its initializer sets its own handling) ignores it: the revert is ours."""
    main = os.getpid()

    def handler(_signum, _frame):
        if os.getpid() != main:
            return
        interrupt()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@app.command()
def generate(
    ctx: typer.Context,
    write: bool = typer.Option(False, "--write", help="Store it in the api and worker env files (0600, atomic) "
                                                      "instead of printing it."),
    force: bool = typer.Option(False, "--force", help="With --write: replace a key the env files already hold "
                                                      "(stored provider keys become undecryptable)."),
) -> None:
    """A new key: base64 of 32 random bytes."""
    from aixsss_ops.keys.service import generate as gen

    st = state(ctx)
    if write and force:
        confirm(st, "replace the API_KEY_ENCRYPTION_KEY of the env files without re-encrypting stored values?")
    res = gen(st.deployment, write, force)
    if st.out.json_mode:
        sys.stdout.write(__import__("json").dumps(res) + "\n")  # the key itself is the result: not scrubbed
        return
    if write:
        st.out.info(f"wrote a new key (fingerprint {res['fingerprint']}) to {', '.join(res['written'])}")
    else:
        sys.stdout.write(res["key"] + "\n")
        st.out.info(f"fingerprint {res['fingerprint']}")


@app.command()
def check(
    ctx: typer.Context,
    database_url: str = DatabaseUrl,
    key: str = typer.Option(None, "--key", help="The key to check against ('-' reads stdin; default: "
                                                "API_KEY_ENCRYPTION_KEY from the environment, then the env files).",
                            show_default=False),
    other_key: list[str] = typer.Option([], "--other-key", help="Another key to try on values the configured one "
                                                                "cannot open (repeatable; '-' reads stdin).",
                                        show_default=False),
    workers: int = Workers,
) -> None:
    """Decrypt every stored provider key and tell whose key each belongs to (never prints plaintext).

    Exit 3 when a value decrypts with no known key or only with another key, when api.env and worker.env
    disagree, or when a rotation is unfinished."""
    from aixsss_ops.errors import CheckFailed
    from aixsss_ops.keys.service import check as run_check

    st = state(ctx)
    with _Bar(st) as bar:
        dep = st.deployment.with_flags(DATABASE_URL=database_url, API_KEY_ENCRYPTION_KEY=_read_key(key))
        res = run_check(dep, others=[_read_key(k) for k in other_key], workers=workers,
                        progress=lambda n: bar("check", n, None))

    def human(d: dict) -> None:
        st.out.table(f"provider keys in {d['database']}", ["key fingerprint", "source", "values"],
                     [[f["fingerprint"] + (" (configured)" if f["configured"] else ""), f["source"], f["values"]]
                      for f in d["fingerprints"]] + [["(none)", "undecryptable", d["undecryptable"]],
                                                     ["(none)", "malformed", d["malformed"]]])
        st.out.console.print(f"{d['rows']} profiles, {d['values']} encrypted values ({d['nulls']} empty): "
                             f"{d['decrypt_ok']} ok with the configured key, {d['other_key']} only with another key, "
                             f"{d['undecryptable'] + d['malformed']} undecryptable", markup=False)
        for e in d["errors"]:
            st.out.console.print(f"  {e}", markup=False)

    st.out.emit(res, human)
    if not res["ok"]:  # exit 3; with --json the result above is the one document
        if not st.out.json_mode:
            for f in res["findings"]:
                st.out.error(f)
        raise typer.Exit(CheckFailed.exit_code)


@app.command()
def rotate(
    ctx: typer.Context,
    new_key: str = typer.Option(None, "--new-key", help="The new key ('-' reads it from stdin).", show_default=False),
    generate: bool = typer.Option(False, "--generate", help="Generate the new key (kept in the env files)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check every value and print the plan; change nothing."),
    db_only: bool = typer.Option(False, "--db-only", help="Steps 1-4 only (env managed elsewhere): keys from flags "
                                                          "and the environment; the queue stays paused."),
    rollback: bool = typer.Option(False, "--rollback", help="Go back to the kept previous key (or revert an "
                                                            "unfinished rotation)."),
    old_key: str = typer.Option(None, "--old-key", help="The current key, when not in the environment or env files "
                                                        "('-' reads stdin).", show_default=False),
    database_url: str = DatabaseUrl,
    redis_url: str = typer.Option(None, "--redis-url", help="Redis URL (default: REDIS_URL, the env files, then "
                                                            "ops.toml).", show_default=False),
    queue: str = typer.Option(None, "--queue", help="Queue name (default: AI_QUEUE_NAME, the env files, then "
                                                    "ops.toml).", show_default=False),
    drain_timeout: float = typer.Option(120.0, "--drain-timeout", min=0.0, help="Seconds to wait for active jobs."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Rows per transaction (default 2500).",
                                   show_default=False),
    workers: int = Workers,
    lock_timeout: float = typer.Option(None, "--lock-timeout", min=0.001, help="Seconds a write waits for a row "
                                                                                "another session holds locked before "
                                                                                "the rotation fails and reverts "
                                                                                "(default 60).", show_default=False),
) -> None:
    """Re-encrypt every stored provider key with a new key and switch api and worker to it, losing no job."""
    from aixsss_ops.keys.service import RotateOptions
    from aixsss_ops.usecases import keys

    st = state(ctx)
    opts = RotateOptions(new_key=_read_key(new_key), generate=generate, old_key=_read_key(old_key), db_only=db_only,
                         rollback=rollback, drain_timeout=drain_timeout, batch=batch_size, workers=workers,
                         lock_timeout=lock_timeout)
    dep = st.deployment.with_flags(DATABASE_URL=database_url, REDIS_URL=redis_url, AI_QUEUE_NAME=queue)
    with _Bar(st) as bar:
        rot = keys.prepare_rotation(dep, opts, say=st.out.info, progress=bar)
        if dry_run:
            res = rot.plan()
        else:
            what = ("revert the unfinished rotation" if rot.revert_only else
                    f"rotate API_KEY_ENCRYPTION_KEY {rot.old_fp} -> {rot.new_fp} ({rot.mode})")
            confirm(st, f"{what}?")
            _sigterm_interrupts(rot.interrupt)
            res = keys.rotate(rot)

    def human(r) -> None:
        out = st.out.console
        if r.dry_run:
            out.print(f"plan ({r.mode}, key {r.old_fingerprint} -> {r.new_fingerprint}"
                      + (f", resuming from phase {r.resumed_from}" if r.resumed_from else "") + "):", markup=False)
            for i, step in enumerate(r.plan, 1):
                out.print(f"  {i}. {step}", markup=False)
            return
        out.print(f"{r.phase}: key {r.old_fingerprint} -> {r.new_fingerprint} ({r.mode}) in {r.seconds:.1f}s; "
                  f"{r.reencrypted} value(s) re-encrypted, {r.already_new} already new, {r.verified} verified"
                  + (f", {r.swept + r.late_writes} late write(s) swept" if r.swept + r.late_writes else ""),
                  markup=False)
        if r.restart:
            out.print("restart: " + (f"{r.restart['previous_color']} -> {r.restart['color']} (blue/green)"
                                     if r.restart.get("restarted") else r.restart.get("note", "")), markup=False)
        if r.queue:
            out.print(f"queue '{r.queue}': " + ("resumed" if r.queue_resumed else "left as it was" if r.phase in (
                "done", "reverted") else "left paused"), markup=False)
        for s in r.next_steps:
            out.print(f"next: {s}", markup=False)

    st.out.emit(res.to_dict(), lambda _d: human(res))
