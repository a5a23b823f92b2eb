"""``python -m aixsss_ops.proxy.launch --pid-file PATH [--stale-socket PATH]... -- NGINX ARGS``: the start of the
local proxy program.

A SIGKILLed nginx master leaves its workers running: they keep the listening port, so the nginx supervisord starts
next could not bind it. This first ends what a killed master of this proxy left, then execs nginx (same pid: the
program supervisord signals is nginx itself). What it ends: the processes of the process group of the master the
pid file names (supervisord made it a group of its own; nginx workers stay in it), that run the nginx binary being
started and whose working directory is this one (supervisord's folder of this state directory, which they
inherited). SIGTERM (nginx's fast shutdown), SIGKILL after a few seconds; then the unix sockets a killed master left
(``--stale-socket``) are removed, which nginx would otherwise refuse to bind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

GRACE_S = 5.0


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid`` from ``/proc/PID/stat`` (the fields after the command's last ``)``)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return f[0], int(f[2])
    except (OSError, IndexError, ValueError):
        return None


def leftovers(master: int, exe: str, cwd: str) -> list[int]:
    """The live processes of group ``master`` that run ``exe`` in ``cwd``."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        st = _stat(pid)
        if st is None or st[1] != master or st[0] == "Z":
            continue
        try:
            if os.readlink(f"/proc/{pid}/exe") != exe or os.readlink(f"/proc/{pid}/cwd") != cwd:
                continue
        except OSError:
            continue
        out.append(pid)
    return out


def clear(pid_file: Path, exe: str, stale: list[Path], grace: float = GRACE_S) -> list[int]:
    """End what the master ``pid_file`` names left (see the module's doc), remove ``stale``; the pids ended."""
    try:
        master = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        master = None
    ended: list[int] = []
    if master is not None and master != os.getpid():
        cwd = os.getcwd()
        ended = leftovers(master, exe, cwd)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
            left = leftovers(master, exe, cwd)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while leftovers(master, exe, cwd) and time.monotonic() < deadline:
                time.sleep(0.05)
    if master is None or not leftovers(master, exe, os.getcwd()):
        for path in stale:
            path.unlink(missing_ok=True)
    return ended


def main(args: list[str]) -> None:
    if "--" not in args:
        sys.exit("usage: launch --pid-file PATH [--stale-socket PATH]... -- NGINX ARGS")
    sep = args.index("--")
    opts, argv = args[:sep], args[sep + 1 :]
    pid_file: Path | None = None
    stale: list[Path] = []
    it = iter(opts)
    for opt in it:
        if opt == "--pid-file":
            pid_file = Path(next(it))
        elif opt == "--stale-socket":
            stale.append(Path(next(it)))
        else:
            sys.exit(f"launch: unknown option {opt}")
    if not argv or pid_file is None:
        sys.exit("launch: --pid-file and a program after -- are required")
    exe = os.path.realpath(argv[0])
    ended = clear(pid_file, exe, stale)
    if ended:
        print(f"ended {len(ended)} process(es) a killed nginx master left running (pids "
              f"{', '.join(map(str, ended))})", flush=True)
    try:
        os.execv(argv[0], argv)
    except OSError as e:
        print(f"cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
