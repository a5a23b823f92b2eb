"""The runner: when, on_failure (abort/continue/rollback list), timeouts, run records, resume after abort
and after SIGKILL. Steps are real forked processes writing real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aixsss_ops.config import load_config
from aixsss_ops.errors import UsageError
from aixsss_ops.playbook import model
from aixsss_ops.playbook.runner import Runner, RunStore
from tests.unit.playbook_helpers import lines, register

REPO = Path(__file__).resolve().parents[2]
register()


@pytest.fixture
def env(tmp_path):
    cfg_path = tmp_path / "ops.toml"
    cfg_path.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    return {"cfg": load_config(cfg_path), "cfg_path": cfg_path, "dir": tmp_path, "log": tmp_path / "log.txt"}


def book(env, body: str) -> model.Playbook:
    p = env["dir"] / "book.yml"
    p.write_text(textwrap.dedent(body).lstrip().replace("LOG", str(env["log"])))
    return model.load(p)


def run(env, b, variables=None, **vars_cli):
    r = Runner(env["cfg"], b, RunStore(env["cfg"].state))
    return r.start(variables if variables is not None else model.resolve_vars(b, vars_cli, {}))


def stored(env, run_id) -> dict:
    return json.loads((env["cfg"].state / "playbooks" / "runs" / f"{run_id}.json").read_text())


def test_steps_run_in_order_and_the_record_has_outcomes_and_durations(env):
    b = book(env, """
        name: t
        vars: {flag: false}
        steps:
          - {id: one, action: test.mark, with: {file: LOG, text: "a"}}
          - {id: skipped, action: test.mark, when: vars.flag, with: {file: LOG}}
          - {id: two, action: test.mark, with: {file: LOG, text: "${steps.one.output.text}-b"}}
        """)
    rec = run(env, b)
    assert rec["status"] == "succeeded" and rec["exit_code"] == 0
    assert lines(env["log"]) == ["one:start", "one:a", "two:start", "two:a-b"]
    on_disk = stored(env, rec["id"])
    assert [(s["id"], s["status"]) for s in on_disk["steps"]] == [
        ("one", "succeeded"), ("skipped", "skipped"), ("two", "succeeded")]
    assert on_disk["steps"][2]["output"] == {"text": "a-b", "resumed": False}
    assert all(s["duration_s"] is not None for s in on_disk["steps"] if s["status"] == "succeeded")
    assert on_disk["steps"][1]["note"] == "when 'vars.flag' is false"
    assert (env["cfg"].state / "playbooks" / "runs" / f"{rec['id']}.json").stat().st_mode & 0o777 == 0o600


def test_abort_stops_and_continue_goes_on(env):
    b = book(env, """
        name: t
        steps:
          - {id: soft, action: test.mark, with: {file: LOG, fail: true}, on_failure: continue}
          - {id: after, action: test.mark, with: {file: LOG}, when: steps.soft.failed and run.failed}
          - {id: hard, action: test.mark, with: {file: LOG, fail: true}}
          - {id: never, action: test.mark, with: {file: LOG}}
        """)
    rec = run(env, b)
    assert rec["status"] == "failed" and rec["exit_code"] == 3  # CheckFailed's exit code
    assert [s["status"] for s in rec["steps"]] == ["failed", "succeeded", "failed", "pending"]
    assert rec["failure"]["step"] == "hard" and "failed on purpose" in rec["failure"]["message"]
    assert "never:start" not in lines(env["log"])


def test_a_failure_runs_the_named_rollback_list(env):
    b = book(env, """
        name: t
        steps:
          - {id: before, action: test.mark, with: {file: LOG}}
          - {id: deploy, action: test.mark, with: {file: LOG, fail: true}, on_failure: back}
          - {id: never, action: test.mark, with: {file: LOG}}
        rollbacks:
          back:
            - {id: undo, action: test.mark, with: {file: LOG, text: "undo ${failure.step}"}}
            - {id: optional, action: test.mark, with: {file: LOG}, when: steps.before.failed}
        """)
    rec = run(env, b)
    assert rec["status"] == "rolled_back" and rec["exit_code"] == 3
    assert lines(env["log"])[-2:] == ["undo:start", "undo:undo deploy"]
    assert [s["status"] for s in rec["rollback"]["steps"]] == ["succeeded", "skipped"]
    assert rec["steps"][2]["status"] == "pending"
    with pytest.raises(UsageError, match="already ended: rolled_back"):
        Runner(env["cfg"], b, RunStore(env["cfg"].state)).resume(rec["id"])


def test_a_step_timeout_stops_the_step_and_what_it_started(env):
    marker = env["dir"] / "grandchild.pid"
    b = book(env, """
        name: t
        steps:
          - {id: slow, action: test.mark, with: {file: LOG, sleep: 30}, timeout: 1s}
        """)
    # the action also starts a program, as pg_dump would be started: it must not outlive the timeout
    from tests.unit import playbook_helpers

    orig = playbook_helpers._mark

    def with_child(ctx, **kw):
        p = subprocess.Popen(["sleep", "60"])
        marker.write_text(str(p.pid))
        return orig(ctx, **kw)

    from aixsss_ops.playbook.actions import REGISTRY, Action

    REGISTRY["test.mark"] = Action("test.mark", with_child, REGISTRY["test.mark"].params, True, "x")
    try:
        t0 = time.monotonic()
        rec = run(env, b)
    finally:
        register()
    assert time.monotonic() - t0 < 20
    assert rec["status"] == "failed" and rec["steps"][0]["error"]["message"] == "timed out after 1s"
    pid = int(marker.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the program the timed-out step started is still running")


def test_resume_after_an_abort_retries_the_failed_step_only(env):
    flag = env["dir"] / "fail"
    flag.write_text("1")
    b = book(env, """
        name: t
        vars: {fail: true}
        steps:
          - {id: backup, action: test.mark, with: {file: LOG}}
          - {id: flaky, action: test.mark, with: {file: LOG, fail: "${vars.fail}"}}
          - {id: last, action: test.mark, with: {file: LOG}}
        """)
    rec = run(env, b)
    assert rec["status"] == "failed"
    # a resumed run keeps its variables: edit the record's var as an operator would fix the cause outside
    on_disk = stored(env, rec["id"])
    on_disk["vars"]["fail"] = False
    (env["cfg"].state / "playbooks" / "runs" / f"{rec['id']}.json").write_text(json.dumps(on_disk))
    rec2 = Runner(env["cfg"], b, RunStore(env["cfg"].state)).resume(rec["id"])
    assert rec2["status"] == "succeeded"
    assert lines(env["log"]).count("backup:x") == 1
    assert rec2["steps"][1]["attempts"] == 2 and rec2["steps"][1]["previous_errors"][0]["exit_code"] == 3
    assert len(rec2["processes"]) == 2


def test_resume_refuses_a_changed_playbook(env):
    b = book(env, """
        name: t
        steps:
          - {id: a, action: test.mark, with: {file: LOG, fail: true}}
        """)
    rec = run(env, b)
    b2 = book(env, """
        name: t
        steps:
          - {id: a, action: test.mark, with: {file: LOG}}
        """)
    with pytest.raises(UsageError, match="changed since run"):
        Runner(env["cfg"], b2, RunStore(env["cfg"].state)).resume(rec["id"])


def test_sigkill_mid_step_then_resume_never_repeats_a_finished_step(env):
    b = book(env, """
        name: t
        steps:
          - {id: backup, action: test.mark, with: {file: LOG, text: done}}
          - {id: slow, action: test.mark, with: {file: LOG, sleep: 4}}
          - {id: last, action: test.mark, with: {file: LOG}}
        """)
    argv = [sys.executable, "-m", "tests.unit.playbook_helpers", str(env["cfg_path"]), str(b.path)]
    p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    runs = env["cfg"].state / "playbooks" / "runs"
    deadline = time.monotonic() + 30
    rec = None
    while time.monotonic() < deadline:
        files = list(runs.glob("*.json")) if runs.exists() else []
        if files:
            rec = json.loads(files[0].read_text())
            if rec["steps"][1]["status"] == "running":
                break
        time.sleep(0.05)
    else:
        pytest.fail(f"the slow step never started: {rec}")
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    rec = json.loads(files[0].read_text())
    assert [s["status"] for s in rec["steps"]] == ["succeeded", "running", "pending"]
    time.sleep(5)  # longer than the step: its process died with the runner, so it never finished
    assert "slow:x" not in lines(env["log"])
    assert RunStore(env["cfg"].state).all()[0]["status"] == "interrupted"

    out = subprocess.run([*argv, rec["id"]], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [rec["id"], "succeeded"]
    log = lines(env["log"])
    assert log.count("backup:start") == 1 and log.count("backup:done") == 1
    assert log.count("slow:start") == 2 and log.count("slow:x") == 1 and log[-1] == "last:x"
    final = json.loads(files[0].read_text())
    assert final["steps"][1]["output"]["resumed"] is True and final["steps"][1]["attempts"] == 2
    assert final["steps"][0]["attempts"] == 1


def test_two_processes_cannot_run_the_same_run(env):
    b = book(env, """
        name: t
        steps:
          - {id: a, action: test.mark, with: {file: LOG, fail: true}}
        """)
    rec = run(env, b)
    store = RunStore(env["cfg"].state)
    fd = store.lock(rec["id"])
    try:
        with pytest.raises(UsageError, match="being run by another process"):
            Runner(env["cfg"], b, store).resume(rec["id"])
    finally:
        os.close(fd)


SECRET = "k3y-" + "Zq9xW2vR7tLm4pN8sB6d"  # the value of a secret-named variable in the run's environment
KNOWN = "already-known-secret-Hf73kq"  # a value the scrubber knows already, in a variable with a plain name


def test_secrets_from_env_never_reach_the_plan_errors_or_the_run_record(env):
    from aixsss_ops.output import scrubber

    scrubber.add(KNOWN)
    b = book(env, """
        name: t
        steps:
          - {id: one, action: test.mark, with: {file: LOG, text: "key=${env.API_KEY_ENCRYPTION_KEY}"}}
          - {id: two, action: test.mark, with: {file: LOG, text: "${env.PLAIN}"}}
          - {id: bad, action: test.mark, with: {file: LOG, sleep: "${env.API_KEY_ENCRYPTION_KEY}"}, on_failure: back}
          - {id: three, action: test.mark, with: {file: LOG, text: "${env.API_KEY_ENCRYPTION_KEY}"}}
        rollbacks:
          back:
            - {id: undo, action: test.mark, with: {file: LOG, fail: true, text: "${env.API_KEY_ENCRYPTION_KEY}"},
               when: "env.API_KEY_ENCRYPTION_KEY != 'x'"}
        """)
    environ = {"API_KEY_ENCRYPTION_KEY": SECRET, "PLAIN": KNOWN, "PATH": os.environ["PATH"]}
    r = Runner(env["cfg"], b, RunStore(env["cfg"].state), environ=environ)
    plan = r.plan({})
    assert SECRET not in json.dumps(plan) and KNOWN not in json.dumps(plan)
    assert plan[0]["params"]["text"] == "key=****"
    rec = r.start({})
    assert lines(env["log"])[1] == f"one:key={SECRET}"  # the action itself got the real value
    assert rec["status"] == "rollback_failed"
    bad = next(s for s in rec["steps"] if s["id"] == "bad")
    assert bad["status"] == "failed" and "parameter sleep" in bad["error"]["message"]
    on_disk = (env["cfg"].state / "playbooks" / "runs" / f"{rec['id']}.json").read_text()
    for text in (on_disk, json.dumps(rec)):
        assert SECRET not in text and KNOWN not in text
    assert "****" in bad["error"]["message"]


def test_the_cli_plan_masks_env_secrets(env):
    from tests.cli import run_cli

    p = env["dir"] / "book.yml"
    p.write_text(textwrap.dedent("""
        name: t
        steps:
          - {id: one, action: deploy.status, when: "env.MY_TOKEN != 'x'"}
          - {id: two, action: backup.verify, with: {id: "${env.MY_TOKEN}"}}
        """))
    for args in (["play", str(p), "--dry-run"], ["--json", "play", str(p), "--dry-run"]):
        r = run_cli(*args, config=env["cfg_path"], env={"MY_TOKEN": SECRET})
        assert r.code == 0, r.output
        assert SECRET not in r.output and "****" in r.output
