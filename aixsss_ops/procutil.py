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


# The leader of a group run by ``run_group``: it runs the program as its child in the same group and passes on its
# exit status (128 + N for a signal N, 127 when it cannot be started). SIGTERM (sent by the kernel when the process
# that started it dies, or by that process) makes it SIGKILL the whole group, itself included. It holds the
# descriptors ``run_group`` passes it (a lock, say) until the group is gone; the program does not inherit them.
_LEADER = """\
import os, signal, subprocess, sys
signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
try:
    p = subprocess.Popen(sys.argv[1:])
except OSError as e:
    print(f"cannot run {sys.argv[1]}: {e}", flush=True)
    sys.exit(127)
code = p.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


def run_group(argv: Sequence[str], *, timeout: float | None = None, hold_fds: Sequence[int] = (),
              **popen: object) -> int | None:
    """Run ``argv`` in a process group of its own and return its exit status (None: ``timeout`` passed first).

    Nothing of the group outlives the call: on return, on a timeout and on an exception (KeyboardInterrupt) the
    group is SIGKILLed, and when this process dies (even of SIGKILL) the group's leader kills the group. ``popen``:
    ``subprocess.Popen``'s own options (cwd, env, stdin, stdout, stderr); ``hold_fds``: descriptors of this process
    the group's leader keeps open until the whole group has died (a lock that another run then waits on)."""
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LEADER, *argv], start_new_session=True,
                            pass_fds=tuple(hold_fds), preexec_fn=partial(die_with_parent, os.getpid(), signal.SIGTERM),
                            **popen)  # type: ignore[call-overload]
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):  # what is left of the group: background programs, on a timeout
            os.killpg(proc.pid, signal.SIGKILL)  # or an interrupt the leader too
        proc.wait()
