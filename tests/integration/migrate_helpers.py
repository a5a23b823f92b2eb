"""Helpers for the migrate tests: crafted migration folders, the CLI as a real process, ledger queries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from aixsss_ops.dburl import parse_database_url
from tests.conftest import poll  # noqa: F401 (re-exported for the test modules)

CLI = str(Path(sys.executable).parent / "aixsss-ops")


def write_migrations(root: Path, migrations: dict[str, str], lock: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if lock:
        (root / "migration_lock.toml").write_text('provider = "postgresql"\n')
    for name, sql in migrations.items():
        d = root / name
        d.mkdir(exist_ok=True)
        (d / "migration.sql").write_text(sql)
    return root


def cli(*args: str, env: dict | None = None, timeout: float = 60, cwd: str | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NODE_ENV")}
    e.update(env or {})
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=e, timeout=timeout, cwd=cwd)


def cli_json(*args: str, **kw) -> tuple[int, dict]:
    r = cli("--json", *args, **kw)
    return r.returncode, json.loads(r.stdout)


def connect(url: str) -> psycopg.Connection:
    return parse_database_url(url).connect(timeout=5)


def ledger(url: str) -> list[dict]:
    with connect(url) as c:
        cur = c.execute("SELECT * FROM _prisma_migrations ORDER BY started_at, id")
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def tables(url: str) -> set[str]:
    with connect(url) as c:
        return {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
