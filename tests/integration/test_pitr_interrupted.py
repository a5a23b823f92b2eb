"""``restore --to-time`` interrupted by SIGKILL at a phase, on a whole embedded stack (local runtime, real
pgBackRest, Postgres, SeaweedFS, supervisord), through the CLI.

Once the restored folder has taken the live one's place, the journal stays until the app is started again, ``stack
up`` is refused meanwhile and the next ``restore --to-time`` finishes the interrupted one forward (the objects
rewound to its target, the app units it stopped started); a stack that is not running is refused before anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli import EXE, REPO
from tests.conftest import poll, state_tmpdir
from tests.integration.backup_helpers import instant, objects_state, put
from tests.integration.test_pitr import DB, Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    s = Stack(state_tmpdir("aixsss-pitr-int-"))
    r = s.cli("stack", "up", timeout=240)
    assert r.code == 0, r.output
    try:
        r = s.cli("--json", "backup", "base", timeout=300)
        assert r.code == 0, r.output
        with s.pg("postgres") as c:
            c.execute(f"CREATE DATABASE {DB}")
        yield s
    finally:
        r = s.cli("stack", "down", timeout=180)
        if r.code == 0:
            shutil.rmtree(s.root, ignore_errors=True)


def _start_restore(stack, target: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    return subprocess.Popen([EXE, "--config", str(stack.cfg_path), "--yes", "restore", "--to-time", target],
                            cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _units(stack) -> dict:
    return {u["unit"]: u for u in stack.cli("--json", "stack", "status").json["services"]}


def _doctor(stack) -> dict:
    r = stack.cli("--json", "doctor", "--only", "backup.pitr-restore")
    return next(f for f in r.json["findings"] if f["check"] == "backup.pitr-restore")


def _journal(stack) -> Path:
    return stack.cfg.state / "postgres" / "pitr-restore.json"


def _app_running(stack) -> bool:
    u = _units(stack)
    return u["api-blue"]["state"] == "RUNNING" and u["worker-blue"]["state"] == "RUNNING"


def test_a_restore_killed_while_rewinding_the_bucket_is_finished_by_the_rerun(stack):
    with stack.pg() as c:
        c.execute("CREATE TABLE rewound (id int)")
        c.execute("INSERT INTO rewound VALUES (1)")
    put(stack.client, stack.bucket, "assets/rewound/kept.bin", b"as it was at T")
    t = instant()
    at_t = objects_state(stack.client, stack.bucket)
    with stack.pg() as c:
        c.execute("INSERT INTO rewound VALUES (2)")
    put(stack.client, stack.bucket, "assets/rewound/kept.bin", b"overwritten after T")
    for i in range(300):  # hidden by the rewind: it takes long enough to be killed in the middle of it
        put(stack.client, stack.bucket, f"assets/rewound/after-{i}.bin", b"written after T")

    p = _start_restore(stack, t.isoformat())
    seen = []
    for line in p.stderr:
        seen.append(line)
        if line.startswith("rewinding bucket"):
            p.kill()
            break
    p.wait(30)
    assert p.returncode == -9, "".join(seen)
    j = json.loads(_journal(stack).read_text())
    assert j["phase"] == "finishing" and j["with_objects"] and ["api", "blue"] in j["stopped"], j
    units = _units(stack)
    assert units["api-blue"]["state"] != "RUNNING" and units["worker-blue"]["state"] != "RUNNING", units
    found = _doctor(stack)
    assert found["status"] == "fail" and f"aixsss-ops --yes restore --to-time {j['target']}" in found["fix"], found

    kept_before = set((stack.cfg.state / "postgres").glob("data.pre_pitr_*"))
    r = stack.cli("--json", "--yes", "restore", "--to-time", j["target"], timeout=600)
    assert r.code == 0, r.output
    assert r.json["kept_data_dir"] == j["kept"] and r.json["target"] == j["target"], r.json
    assert "pgbackrest restore of" not in r.stderr, r.stderr
    assert set((stack.cfg.state / "postgres").glob("data.pre_pitr_*")) == kept_before
    assert objects_state(stack.client, stack.bucket) == at_t
    with stack.pg() as c:
        assert c.execute("SELECT array_agg(id) FROM rewound").fetchone()[0] == [1]
    poll(lambda: _app_running(stack), timeout=30, interval=0.3, what="api-blue and worker-blue RUNNING")
    assert not _journal(stack).exists()
    assert _doctor(stack)["status"] == "ok"


def test_a_restore_killed_after_the_swap_blocks_stack_up_and_is_finished_forward(stack):
    """Also once the stack was stopped meanwhile: `stack up` then starts the infrastructure alone."""
    with stack.pg() as c:
        c.execute("CREATE TABLE swapped (id int)")
        c.execute("INSERT INTO swapped VALUES (10)")
    t = instant()
    with stack.pg() as c:
        c.execute("INSERT INTO swapped VALUES (11)")
    pgdir = stack.cfg.state / "postgres"
    kept_before = set(pgdir.glob("data.pre_pitr_*"))

    p = _start_restore(stack, t.isoformat())
    # the restored folder has taken the live one's place (both renames made)
    poll(lambda: set(pgdir.glob("data.pre_pitr_*")) - kept_before and not any(pgdir.glob("data.pitr-*.partial")),
         timeout=300, interval=0.005, what="the restored folder swapped in")
    p.kill()
    p.wait(30)
    j = json.loads(_journal(stack).read_text())
    assert j["phase"] == "swapping", j
    kept = set(pgdir.glob("data.pre_pitr_*"))

    r = stack.cli("stack", "up", timeout=240)
    assert r.code == 3, r.output
    assert f"`aixsss-ops --yes restore --to-time {j['target']}`" in r.output, r.output
    units = _units(stack)
    assert units["api-blue"]["state"] != "RUNNING" and units["worker-blue"]["state"] != "RUNNING", units
    assert _journal(stack).exists()
    # stopped meanwhile, the stack gets its infrastructure alone from `stack up`, which the restore needs to finish
    assert stack.cli("stack", "down", timeout=180).code == 0
    r = stack.cli("--yes", "restore", "--to-time", j["target"], timeout=120)
    assert r.code == 3 and "the stack is not running" in r.output and "infrastructure alone" in r.output, r.output
    r = stack.cli("stack", "up", timeout=240)
    assert r.code == 3 and "the infrastructure is started, the app is not" in r.output, r.output
    units = _units(stack)
    assert units["redis"]["state"] == "RUNNING" and units["api-blue"]["state"] != "RUNNING", units

    r = stack.cli("--json", "--yes", "restore", "--to-time", j["target"], timeout=600)
    assert r.code == 0, r.output
    assert r.json["kept_data_dir"] == j["kept"] and r.json["target"] == j["target"], r.json
    assert "pgbackrest restore of" not in r.stderr, r.stderr  # no second restore
    assert set(pgdir.glob("data.pre_pitr_*")) == kept and not list(pgdir.glob("data.failed_pitr_*"))
    with stack.pg() as c:
        assert c.execute("SELECT array_agg(id) FROM swapped").fetchone()[0] == [10]
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    poll(lambda: _app_running(stack), timeout=30, interval=0.3, what="api-blue and worker-blue RUNNING")
    assert not _journal(stack).exists()
    assert _doctor(stack)["status"] == "ok"


def test_a_restore_with_the_stack_down_is_refused_before_anything(stack):
    pgdir = stack.cfg.state / "postgres"
    folders = set(pgdir.glob("data*"))
    r = stack.cli("stack", "down", timeout=180)
    assert r.code == 0, r.output
    try:
        r = stack.cli("--yes", "restore", "--to-time", "-0s", timeout=120)
        assert r.code == 3, r.output
        assert "the stack is not running: `aixsss-ops stack up` first" in r.output, r.output
        assert "pgbackrest restore of" not in r.output
        assert set(pgdir.glob("data*")) == folders and not _journal(stack).exists()
    finally:
        r = stack.cli("stack", "up", timeout=240)
        assert r.code == 0, r.output
