"""Run one step's action in a forked child: a per-step timeout can stop it (and every program it started)
without leaving the runner in a half-state, and the child dies with the runner (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from aixsss_ops.errors import OpsError
from aixsss_ops.poll import poll_until
from aixsss_ops.procutil import die_with_parent


def error_dict(e: BaseException) -> dict[str, Any]:
    from aixsss_ops.output import scrubber

    if isinstance(e, OpsError):
        return {"type": type(e).__name__, "message": scrubber.scrub(e.message),
                "hint": scrubber.scrub(e.hint) if e.hint else None,
                "details": scrubber.scrub(e.details)[-4000:] if e.details else None, "exit_code": e.exit_code}
    return {"type": type(e).__name__, "message": scrubber.scrub(f"internal error: {type(e).__name__}: {e}"),
            "hint": None, "details": scrubber.scrub(traceback.format_exc())[-4000:], "exit_code": 1}


class StepTimeout(Exception):
    pass


def call(fn: Callable[[Callable[[str], None]], Any], timeout: float | None, on_say: Callable[[str], None],
         grace: float = 15.0, on_start: Callable[[int], None] | None = None) -> dict[str, Any]:
    """``fn(say)`` in a child process; returns ``{"ok": True, "output": ...}`` or ``{"ok": False, "error": ...}``.

    The child runs in its own process group: a timeout sends SIGTERM to the group, then SIGKILL after ``grace``.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(r)
            os.setpgid(0, 0)
            die_with_parent(parent)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            out = os.fdopen(w, "w", buffering=1)

            def say(msg: str) -> None:
                out.write(json.dumps({"say": str(msg)}) + "\n")

            try:
                payload = {"ok": True, "output": fn(say)}
            except BaseException as e:  # noqa: BLE001 - everything goes back to the runner
                payload = {"ok": False, "error": error_dict(e)}
            out.write(json.dumps({"result": payload}, default=str) + "\n")
            out.flush()
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    if on_start is not None:
        on_start(pid)
    deadline = None if timeout is None else time.monotonic() + timeout
    buf, result = b"", None
    try:
        with os.fdopen(r, "rb", buffering=0) as f:
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([f], [], [], wait)
                if not ready:
                    raise StepTimeout()
                chunk = f.read(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if "say" in msg:
                        on_say(msg["say"])
                    elif "result" in msg:
                        result = msg["result"]
    except StepTimeout:
        _stop(pid, grace)
        return {"ok": False, "timed_out": True,
                "error": {"type": "StepTimeout", "message": f"timed out after {timeout:g}s", "hint": None,
                          "details": None, "exit_code": 1}}
    except BaseException:
        _stop(pid, grace)
        raise
    _, status = os.waitpid(pid, 0)
    if result is None:
        code = os.waitstatus_to_exitcode(status)
        return {"ok": False, "error": {"type": "ChildDied", "message": f"the step's process ended without a result "
                                       f"(exit {code})", "hint": None, "details": None, "exit_code": 1}}
    return result


def _stop(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    if not poll_until(lambda: os.waitpid(pid, os.WNOHANG)[0], grace, interval=0.05):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with contextlib.suppress(ProcessLookupError):  # programs the step started in its group
        os.killpg(pid, signal.SIGKILL)
