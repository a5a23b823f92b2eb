"""A deployment for the keys tests: a fresh database with the app's schema, env files, profiles encrypted for real."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from aixsss_ops import crypto, envfile
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.migrate import deploy as migrate_deploy
from tests.conftest import REPO, stack_config, state_tmpdir

COLUMNS = ("apiKeyEncrypted", "imageApiKeyEncrypted", "videoApiKeyEncrypted")


@dataclass
class Deployment:
    root: Path
    cfg: Path
    state: Path
    database_url: str
    redis_url: str
    queue: str

    def env_file(self, svc: str) -> Path:
        return self.state / "env" / f"{svc}.env"

    def env(self, svc: str) -> dict[str, str]:
        return envfile.read(self.env_file(svc))

    def write_env(self, key: str | None, **extra: str) -> None:
        for svc in ("api", "worker"):
            env = {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url, "AI_QUEUE_NAME": self.queue,
                   "JWT_SECRET": "j" * 40, **extra}
            if key is not None:
                env["API_KEY_ENCRYPTION_KEY"] = key
            envfile.write(self.env_file(svc), env)

    def connect(self):
        return parse_database_url(self.database_url).connect()

    def values(self) -> dict[str, tuple]:
        with self.connect() as c:
            rows = c.execute(f'SELECT "id", {", ".join(f"{chr(34)}{k}{chr(34)}" for k in COLUMNS)} '
                             'FROM "AIProfile" ORDER BY "id"').fetchall()
        return {r[0]: r[1:] for r in rows}

    def plaintexts(self, raw_key: str) -> dict[str, tuple]:
        key = crypto.derive_key(raw_key)
        return {rid: tuple(None if v is None else crypto.decrypt(v, key) for v in vals)
                for rid, vals in self.values().items()}

    def progress(self) -> dict | None:
        p = self.state / "keys" / "rotation.json"
        return json.loads(p.read_text()) if p.exists() else None


def make_deployment(pg_server, redis_server, queue: str) -> Deployment:
    root = state_tmpdir("aixsss-keys-")
    cfg = stack_config(root)
    url = pg_server.url(pg_server.create_database())
    migrate_deploy(url, REPO / "app" / "migrations")
    return Deployment(root, cfg, root / "state", url, redis_server.url, queue)


def deployment_with_key(pg_server, redis_server, queue: str, key: str) -> Deployment:
    """``make_deployment`` whose env files hold ``key`` as API_KEY_ENCRYPTION_KEY."""
    d = make_deployment(pg_server, redis_server, queue)
    d.write_env(key)
    return d


def plaintext(i: int, col: int) -> str:
    return f"sk-plain-{col}-{i:05d}-{secrets.token_hex(8)}"


def insert_profiles(dep: Deployment, raw_key: str | None, n: int, *, start: int = 0, payloads=None) -> dict[str, tuple]:
    """``n`` profiles encrypted with ``raw_key`` by the app's algorithm (some image/video keys empty); their plaintexts."""
    key = crypto.derive_key(raw_key) if raw_key is not None else None
    plain: dict[str, tuple] = {}
    with dep.connect() as c:
        c.execute("""INSERT INTO "Team" ("id", "name", "createdAt", "updatedAt") VALUES ('t', 't', now(), now())
                     ON CONFLICT DO NOTHING""")
        with c.cursor() as cur:
            for i in range(start, start + n):
                texts = (plaintext(i, 0), plaintext(i, 1) if i % 3 else None, plaintext(i, 2) if i % 4 else None)
                vals = payloads[i - start] if payloads else tuple(
                    None if t is None else crypto.encrypt(t, key) for t in texts)
                rid = f"p{i:06d}"
                cur.execute('INSERT INTO "AIProfile" ("id", "teamId", "name", "provider", "model", "apiKeyEncrypted", '
                            '"imageApiKeyEncrypted", "videoApiKeyEncrypted", "updatedAt") '
                            "VALUES (%s, 't', %s, 'openai_compatible', 'm', %s, %s, %s, now())", (rid, f"n{i}", *vals))
                plain[rid] = texts
    return plain


def all_secret_texts(plain: dict[str, tuple]) -> list[str]:
    return [t for vals in plain.values() for t in vals if t]
