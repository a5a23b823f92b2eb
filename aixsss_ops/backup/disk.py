"""A full disk, named as such: the destination (or scratch) directory, its filesystem's free space, what to do.

Writes of a backup fail with ENOSPC (or EDQUOT) in three places: pg_dump/pg_restore (their stderr says "No space
left on device"), the PostgreSQL server (its data directory is full), and this tool's own writes (checksumming,
encrypting, decrypting, downloading, the manifest). Each becomes one OpsError naming the directory and the space
left, instead of an "internal error" or a bare tool message.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from aixsss_ops.errors import OpsError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded", "could not extend file")


def is_no_space(exc: BaseException) -> bool:
    """An OSError (or one wrapped as a cause/context) that says the filesystem is full."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def says_no_space(text: str | None) -> bool:
    """A tool's or the server's message about a full filesystem."""
    low = (text or "").lower()
    return any(t in low for t in _NO_SPACE_TEXT)


def free_text(path: Path) -> str:
    """'12.0 MB free of 64.0 MB' for the filesystem holding ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        u = shutil.disk_usage(p)
    except OSError:
        return "free space unknown"
    return f"{_mb(u.free)} free of {_mb(u.total)}"


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.1f} GB"


def full(directory: Path, what: str, cleaned: str, details: str | None = None) -> OpsError:
    """The error for a local filesystem that filled up while ``what`` was being written into ``directory``."""
    return OpsError(
        f"out of disk space in {directory} while {what} ({free_text(directory)}): {cleaned}",
        hint=f"free space on the filesystem of {directory}, or point backup.dir at a larger one, then rerun",
        details=details,
    )


def server_full(database: str, what: str, cleaned: str, details: str | None = None) -> OpsError:
    """The error for a PostgreSQL server whose data directory filled up (its tablespace, not ours)."""
    return OpsError(
        f"the PostgreSQL server ran out of disk space while {what} into {database}: {cleaned}",
        hint="free space in the server's data directory (the restore needs room for a full second copy of the "
             "database until the swap), then rerun",
        details=details,
    )
