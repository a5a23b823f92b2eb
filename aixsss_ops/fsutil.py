"""Files that must survive a crash: written to a temp file, fsynced, then renamed into place."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644, *, sync: bool = True) -> None:
    """``sync=False`` still replaces the file atomically, only without waiting for the disk (for frequent notes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not sync:
        return
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write_json(path: Path, data: Any, mode: int = 0o644, *, sync: bool = True) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", mode, sync=sync)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def flock_held(path: Path) -> bool:
    """True while another process holds an exclusive ``flock`` on ``path`` (the kernel drops it when that
    process dies, even by SIGKILL, so a held lock always means a live holder)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
