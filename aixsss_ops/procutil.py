"""Child processes that die with the process that started them (Linux ``PR_SET_PDEATHSIG``), and programs run as a
process group that ends as a whole."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from functools import partial

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` (SIGKILL by default) to the calling process when its parent exits (call it in the
    child: a ``preexec_fn`` between fork and exec, or a pool worker's initializer). ``parent``: the parent's pid as
    the parent saw it; when given and the parent is already gone (it died before the call took effect), exit at once."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(137)


# The leader of a group run by ``run_group`` or ``popen_group``: it runs the program as its child in the same group
# (as the account its first two arguments name, uid and gid; -1: its own) and passes on its exit status (128 + N for
# a signal N, 127 when it cannot be started). SIGTERM (sent by the kernel when the process that started it dies, or
# by that process) makes it SIGKILL the whole group, itself included. It holds the descriptors ``run_group`` passes
# it (a lock, say) until the group is gone; the program does not inherit them.
_LEADER = """\
import os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
for fd in os.listdir("/proc/self/fd"):
    if int(fd) > 2:
        try:
            os.set_inheritable(int(fd), False)
        except OSError:
            pass
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.get_exec_path()  # imports what execvp needs while this account can still read the interpreter's library
pid = os.fork()
if pid == 0:
    try:
        if uid >= 0:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        os.execvp(sys.argv[3], sys.argv[3:])
    except Exception as e:
        print(f"cannot run {sys.argv[3]}: {e}", flush=True)
    os._exit(127)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
sys.exit(code if code >= 0 else 128 - code)
"""


def popen_group(argv: Sequence[str], *, user: int | None = None, group: int | None = None,
                **popen: object) -> subprocess.Popen:
    """``argv`` started in a process group of its own (the returned process leads it; its pid is the group's id),
    run as ``user``/``group`` when given (the leader stays this process's account, so it can kill the group). When
    this process dies, even of SIGKILL, the leader SIGKILLs the whole group: no program of it, nor any process the
    program started, outlives it. Ending the group early is the caller's (``os.killpg``)."""
    ids = [str(user if user is not None else -1), str(group if group is not None else -1)]
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", _LEADER, *ids, *argv], start_new_session=True,
                            preexec_fn=partial(die_with_parent, os.getpid(), signal.SIGTERM),
                            **popen)  # type: ignore[call-overload]


def run_group(argv: Sequence[str], *, timeout: float | None = None, hold_fds: Sequence[int] = (),
              **popen: object) -> int | None:
    """Run ``argv`` in a process group of its own and return its exit status (None: ``timeout`` passed first).

    Nothing of the group outlives the call: on return, on a timeout and on an exception (KeyboardInterrupt) the
    group is SIGKILLed, and when this process dies (even of SIGKILL) the group's leader kills the group. ``popen``:
    ``subprocess.Popen``'s own options (cwd, env, stdin, stdout, stderr); ``hold_fds``: descriptors of this process
    the group's leader keeps open until the whole group has died (a lock that another run then waits on)."""
    proc = popen_group(argv, pass_fds=tuple(hold_fds), **popen)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):  # what is left of the group: background programs, on a timeout
            os.killpg(proc.pid, signal.SIGKILL)  # or an interrupt the leader too
        proc.wait()
