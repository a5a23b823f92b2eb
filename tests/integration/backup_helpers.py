"""Shared helpers of the backup tests: an app-like schema, data, object snapshots, byte-for-byte comparisons."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from datetime import UTC, datetime

SCHEMA = """
CREATE TYPE "AIJobStatus" AS ENUM ('queued', 'running', 'succeeded', 'failed', 'cancelled');
CREATE TABLE "Team" (id TEXT PRIMARY KEY, name TEXT NOT NULL, "createdAt" TIMESTAMP(3) NOT NULL DEFAULT now());
CREATE TABLE "AIProfile" (
    id TEXT PRIMARY KEY, "teamId" TEXT NOT NULL REFERENCES "Team"(id), provider TEXT NOT NULL,
    "apiKeyEncrypted" TEXT NOT NULL, "imageApiKeyEncrypted" TEXT, "videoApiKeyEncrypted" TEXT
);
CREATE TABLE "AIJob" (
    id TEXT PRIMARY KEY, "teamId" TEXT NOT NULL REFERENCES "Team"(id), type TEXT NOT NULL,
    status "AIJobStatus" NOT NULL DEFAULT 'queued', input JSONB, result JSONB, cost DOUBLE PRECISION,
    blob BYTEA, "createdAt" TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX "AIJob_teamId_idx" ON "AIJob"("teamId");
CREATE TABLE "Legacy" (id SERIAL PRIMARY KEY, doc JSON, at POINT);
CREATE TABLE _prisma_migrations (
    id VARCHAR(36) PRIMARY KEY, checksum VARCHAR(64) NOT NULL, finished_at TIMESTAMPTZ,
    migration_name VARCHAR(255) NOT NULL, logs TEXT, rolled_back_at TIMESTAMPTZ,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(), applied_steps_count INTEGER NOT NULL DEFAULT 0
);
"""


def seed(url: str, migrations: list[str] | None = None, key: bytes | None = None, rows: int = 500) -> None:
    from aixsss_ops.crypto import encrypt
    from aixsss_ops.dburl import parse_database_url

    key = key or b"k" * 32
    with parse_database_url(url).connect() as c:
        c.execute(SCHEMA)
        for name in migrations or ["000_init", "001_ai_job_profile"]:
            c.execute("INSERT INTO _prisma_migrations (id, checksum, finished_at, migration_name, applied_steps_count) "
                      "VALUES (%s, 'x', now(), %s, 1)", (str(uuid.uuid4()), name))
        c.execute("""INSERT INTO "Legacy" (doc, at) SELECT json_build_object('n', g, 'pad', md5(g::text)), point(g, -g)
                     FROM generate_series(1, 40) g""")
        c.execute("""INSERT INTO "Team" SELECT 'team' || g, 'Team ' || md5(g::text) FROM generate_series(1, 20) g""")
        with c.cursor() as cur:
            cur.executemany(
                'INSERT INTO "AIProfile" VALUES (%s, %s, %s, %s, %s, %s)',
                [(f"p{i}", f"team{i % 20 + 1}", "openai", encrypt(f"sk-secret-{i}", key),
                  encrypt(f"img-{i}", key) if i % 2 else None, None) for i in range(10)])
        c.execute(f"""INSERT INTO "AIJob" (id, "teamId", type, status, input, result, cost, blob, "createdAt")
            SELECT 'job' || g, 'team' || (g % 20 + 1), 'llm_chat', (ARRAY['queued','running','succeeded','failed',
              'cancelled']::"AIJobStatus"[])[g % 5 + 1], jsonb_build_object('prompt', md5(g::text), 'n', g),
              CASE WHEN g % 3 = 0 THEN NULL ELSE jsonb_build_object('text', repeat(md5(random()::text), 3)) END,
              random() * 10, decode(md5(g::text), 'hex'), now() - g * interval '1 minute'
            FROM generate_series(1, {rows}) g""")


def table_dump(url: str) -> dict[str, list[tuple]]:
    """Every row of every user table, as text, sorted: what "byte for byte identical" is compared on."""
    from aixsss_ops.dburl import parse_database_url

    out = {}
    with parse_database_url(url).connect() as c:
        c.execute("SET timezone = 'UTC'")
        tables = c.execute("SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
                           "('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
        for s, t in tables:
            buf = io.BytesIO()
            with c.cursor().copy(f'COPY "{s}"."{t}" TO STDOUT') as cp:
                for chunk in cp:
                    buf.write(chunk)
            out[f"{s}.{t}"] = sorted(buf.getvalue().split(b"\n"))
    return out


def mutate_db(url: str) -> None:
    from aixsss_ops.dburl import parse_database_url

    with parse_database_url(url).connect() as c:
        c.execute("""INSERT INTO "AIJob" (id, "teamId", type) SELECT 'new' || g, 'team1', 'plan_episodes'
                     FROM generate_series(1, 50) g""")
        c.execute("""UPDATE "AIJob" SET status = 'failed', result = '{"error": "boom"}' WHERE id LIKE 'job1%'""")
        c.execute("""DELETE FROM "AIJob" WHERE id LIKE 'job2%'""")
        c.execute("""UPDATE "Team" SET name = 'renamed' WHERE id = 'team3'""")
        c.execute('CREATE TABLE "Extra" (id int)')


def put(client, bucket: str, key: str, data: bytes) -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data))


def objects_state(client, bucket: str) -> dict[str, str]:
    """Current objects: key -> SHA-256 of the bytes."""
    return {o.object_name: hashlib.sha256(client.get_object(bucket, o.object_name).read()).hexdigest()
            for o in client.list_objects(bucket, recursive=True)}


def seed_objects(client, bucket: str, n: int = 30) -> None:
    import os

    for i in range(n):
        put(client, bucket, f"assets/team{i % 3}/img-{i}.png", os.urandom(1000 + i * 37))


def mutate_objects(client, bucket: str) -> None:
    import os

    put(client, bucket, "assets/team0/img-0.png", b"overwritten")  # overwrite
    put(client, bucket, "assets/team1/img-1.png", os.urandom(50))  # overwrite
    client.remove_object(bucket, "assets/team2/img-2.png")  # delete
    put(client, bucket, "assets/new/after-snapshot.bin", os.urandom(77))  # created after T


def instant() -> datetime:
    """An instant between what was written before and after, at the object store's one-second resolution too."""
    time.sleep(1.2)
    t = datetime.now(UTC)
    time.sleep(1.2)
    return t


def pitr_history(stack, db: str) -> dict:
    """On a point-in-time-recovery ``stack`` (``cli``, ``pg``, ``url``, ``client``, ``bucket``, ``state``): a base
    backup, then the database ``db`` and objects at T1, more at T2, deleted and overwritten at T3, with the exact
    data of each."""
    r = stack.cli("--json", "backup", "base", timeout=300)
    assert r.code == 0, r.output
    base = r.json
    with stack.pg("postgres") as c:
        c.execute(f"CREATE DATABASE {db}")
    seed(stack.url, rows=300)
    seed_objects(stack.client, stack.bucket, n=12)
    t1 = instant()
    s1 = stack.state()
    mutate_db(stack.url)
    put(stack.client, stack.bucket, "assets/team0/img-0.png", b"overwritten at T2")
    put(stack.client, stack.bucket, "assets/new/t2.bin", os.urandom(300))
    t2 = instant()
    s2 = stack.state()
    with stack.pg() as c:
        c.execute('DELETE FROM "AIJob" WHERE id LIKE \'job%\'')
        c.execute("""UPDATE "Team" SET name = 'T3'""")
    stack.client.remove_object(stack.bucket, "assets/team1/img-1.png")
    put(stack.client, stack.bucket, "assets/team0/img-0.png", b"overwritten at T3")
    s3 = stack.state()
    assert s1 != s2 != s3
    return {"base": base, "t1": t1, "t2": t2, "s1": s1, "s2": s2, "s3": s3}
