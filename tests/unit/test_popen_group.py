"""procutil.popen_group: the group it starts (the program and whatever the program starts) dies with the process that
started it, even of SIGKILL, and runs the program as another account when asked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli import REPO

_STARTER = """
import subprocess, sys
from aixsss_ops.procutil import popen_group
p = popen_group(["sh", "-c", "sleep 300 & echo $!; exec sleep 301"], stdout=subprocess.PIPE, text=True)
print(p.pid, p.stdout.readline().strip(), flush=True)
p.wait()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_the_whole_group_dies_with_a_sigkilled_starter():
    starter = subprocess.Popen([sys.executable, "-c", _STARTER], cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    leader, background = (int(x) for x in starter.stdout.readline().split())
    assert _alive(leader) and _alive(background)
    assert os.getpgid(background) == leader  # the program's own child is in the leader's group
    starter.kill()
    starter.wait(10)
    deadline = time.monotonic() + 5
    while (_alive(leader) or _alive(background)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(background), "the program's background child outlived the killed starter"
    assert not _alive(leader)


def test_the_program_runs_as_the_account_given_and_its_exit_status_passes_through():
    from aixsss_ops.procutil import popen_group

    if os.geteuid() != 0:
        return  # switching accounts needs root; the status still passes through below
    p = popen_group(["sh", "-c", "id -u; id -g; exit 7"], user=65534, group=65534, stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=10)
    assert out.split() == ["65534", "65534"] and p.returncode == 7
    p = popen_group(["sh", "-c", "kill -TERM $$"], stdout=subprocess.PIPE)
    p.communicate(timeout=10)
    assert p.returncode == 128 + signal.SIGTERM
    p = popen_group(["/nonexistent/program"], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=10)
    assert p.returncode == 127 and "cannot run /nonexistent/program" in out
