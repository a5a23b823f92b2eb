"""The deploy lock: a kernel ``flock`` (released by the kernel if the holder dies, even by SIGKILL)
plus a JSON note of who holds it, for ``lock status`` and for the error a waiting deploy prints."""

from __future__ import annotations

import fcntl
import getpass
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aixsss_ops.errors import CheckFailed, OpsError
from aixsss_ops.fsutil import atomic_write_json, flock_held, read_json


class LockBusy(OpsError):
    pass


@dataclass
class LockInfo:
    held: bool
    holder: dict | None
    stale_note: bool = False


class DeployLock:
    def __init__(self, directory: Path):
        self.path = directory / "deploy.lock"
        self.note = directory / "deploy.lock.json"
        self._fd: int | None = None

    def acquire(self, timeout: float, what: dict, say=None) -> float:
        """Wait up to ``timeout`` seconds; returns the seconds waited. Raises LockBusy naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - start >= timeout:
                    os.close(fd)
                    raise LockBusy(
                        f"another operation holds the lock: {describe(read_json(self.note))}",
                        hint="wait for it, or check 'aixsss-ops deploy lock status'",
                    ) from None
                if say and not told:
                    say(f"waiting for the deploy lock held by {describe(read_json(self.note))}")
                    told = True
                time.sleep(0.2)
        self._fd = fd
        atomic_write_json(
            self.note,
            {
                **what,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "user": getpass.getuser(),
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        return time.monotonic() - start

    def release(self) -> None:
        if self._fd is not None:
            self.note.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def info(self) -> LockInfo:
        """Is the lock held right now, and by whom; a note left by a killed deploy is reported as stale."""
        note = read_json(self.note)
        if flock_held(self.path):
            return LockInfo(True, note)
        return LockInfo(False, None, note is not None)

    def clear_stale(self) -> bool:
        """Remove the note of a holder that died; refuses while a live process holds the lock."""
        info = self.info()
        if info.held:  # a precondition: nothing to clear while its holder lives
            raise CheckFailed(f"the deploy lock is held by a live process: {describe(info.holder)}",
                              hint="wait for it to end; only the note of a killed holder is cleared")
        if info.stale_note:
            self.note.unlink(missing_ok=True)
            return True
        return False


def status_lines(info: LockInfo) -> list[str]:
    """``deploy lock status`` for a person: "held" or "not held", then the holder's note one field a line."""
    if not info.held:
        if info.stale_note:
            return ["not held (a killed deploy left its note: clear it with 'aixsss-ops deploy lock release')"]
        return ["not held"]
    note = info.holder or {}
    action = str(note.get("action") or "deploy") + (f" {note['version']}" if note.get("version") else "")
    return ["held", *(f"{name}: {value if value not in (None, '') else 'unknown'}" for name, value in (
        ("holder", note.get("user")), ("pid", note.get("pid")), ("host", note.get("host")), ("action", action),
        ("since", note.get("since"))))]


def describe(note: dict | None) -> str:
    if not note:
        return "an unknown process"
    return (
        f"{note.get('user')}@{note.get('host')} pid {note.get('pid')} since {note.get('since')}"
        f" ({note.get('action', 'deploy')} {note.get('version', '')})"
    ).strip()
