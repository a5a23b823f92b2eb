"""`keys rotate` stopped by a signal: the pool's workers leave SIGTERM to the parent (unless the pool itself sends it),
the CLI's handler acts in its own process only, and what would refuse the restart is asked before step 1."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
from datetime import UTC, datetime

import pytest

from aixsss_ops.crypto import derive_key, generate_key
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.errors import CheckFailed
from aixsss_ops.keys.pool import init_worker
from aixsss_ops.keys.rotate import Hooks, Rotation


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _worker(parent: int, ready) -> None:
    init_worker([derive_key(generate_key())], parent)
    ready.send(os.getpid())
    while True:
        time.sleep(0.05)


def test_a_pool_worker_outlives_a_sigterm_from_outside_but_not_one_from_its_pool(restore_handlers):
    def interrupts(_s, _f):  # what `keys rotate` installs before its pool forks
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupts)
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    p = ctx.Process(target=_worker, args=(os.getpid(), theirs))
    p.start()
    try:
        assert mine.poll(10) and mine.recv() == p.pid
        subprocess.run(["kill", "-TERM", str(p.pid)], check=True)  # a supervisor, another process
        time.sleep(0.5)
        assert p.is_alive(), f"the worker died of a SIGTERM meant for its parent (exit {p.exitcode})"
        p.terminate()  # the pool's own clean-up of a broken pool
        p.join(10)
        assert p.exitcode == -signal.SIGTERM
    finally:
        if p.is_alive():
            p.kill()
            p.join()


def test_the_cli_handler_interrupts_its_own_process_only(restore_handlers):
    from aixsss_ops.cli.keys import _sigterm_interrupts

    calls = []
    _sigterm_interrupts(lambda: calls.append(1))
    handler = signal.getsignal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is handler
    pid = os.fork()
    if pid == 0:  # a child forked after the handler was installed (a pool worker before its initializer)
        try:
            handler(signal.SIGTERM, None)
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGTERM, None)
    assert calls == [1]


def test_what_would_refuse_the_restart_is_asked_before_anything_else(tmp_path):
    done = []

    def refuse():
        done.append("preflight")
        raise CheckFailed("migration x is recorded as failed")

    hooks = Hooks(preflight=refuse, pause=lambda: done.append("pause"), write_env=lambda: done.append("env"),
                  stage_new_key=lambda: done.append("stage"))
    rot = Rotation(target=parse_database_url("postgresql://u:p@127.0.0.1:1/x"), old=derive_key(generate_key()),
                   new=derive_key(generate_key()), mode="full", state_dir=tmp_path, hooks=hooks)
    with pytest.raises(CheckFailed, match="recorded as failed"):
        rot.run()  # the database (port 1) is never reached
    with pytest.raises(CheckFailed, match="recorded as failed"):
        rot.plan()
    assert done == ["preflight", "preflight"] and not (tmp_path / "rotation.json").exists()


def test_the_sessions_holding_the_rows_are_named_with_what_they_hold():
    from aixsss_ops.keys.rotate import describe_holders

    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    text = describe_holders([(41, "alice", "psql", "idle in transaction", since, 3, None),
                             (42, "bob", "", None, None, 0, "AccessExclusiveLock")])
    assert text == ("session pid 41 (user alice, application_name 'psql', idle in transaction since "
                    "2026-01-02T03:04:05+00:00, holding row locks on 3 profile(s)); "
                    "session pid 42 (user bob, application_name '', holding AccessExclusiveLock on the table)")
