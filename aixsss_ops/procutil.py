"""Child processes that die with the process that started them (Linux ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL the calling process when its parent exits (call it in the child: a ``preexec_fn``
    between fork and exec, or a pool worker's initializer). ``parent``: the parent's pid as the parent saw it;
    when given and the parent is already gone (it died before the call took effect), exit at once."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(137)
