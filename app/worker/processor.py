"""One AI job: the ``"AIJob"`` row is the source of truth, the provider an offline deterministic stand-in."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time

from bullmq import Job
from bullmq.custom_errors import UnrecoverableError
from psycopg.types.json import Jsonb

from aixsss_ops.crypto import CryptoError, decrypt, derive_key
from aixsss_ops.dburl import parse_database_url
from common.db import connect, fetch_one, utcnow
from common.store import ensure_bucket, object_store

log = logging.getLogger("worker")
PROGRESS_STEPS = (25, 50, 75)


def stand_in_provider(job_type: str, job_input: dict, provider: str, model: str) -> dict:
    """What the provider would answer, derived from the request alone so that runs are repeatable."""
    digest = hashlib.sha256(f"{job_type}\n{json.dumps(job_input, sort_keys=True)}".encode()).hexdigest()
    return {"provider": provider, "model": model, "output": f"{job_type}:{digest[:16]}", "digest": digest}


class Processor:
    def __init__(self, env):
        self.pg = parse_database_url(env.DATABASE_URL)
        self.key = derive_key(env.API_KEY_ENCRYPTION_KEY.get_secret_value())
        self.store = object_store(env)
        self.bucket = env.S3_BUCKET

    async def process(self, job: Job, token: str):
        started = time.monotonic()
        async with await connect(self.pg) as conn:
            row = await fetch_one(conn, 'SELECT "status", "aiProfileId" FROM "AIJob" WHERE "id" = %s', (job.id,))
            if row is None:
                raise UnrecoverableError(f"AIJob {job.id} does not exist")
            if row["status"] == "cancelled":
                log.info("job %s %s skipped: cancelled", job.id, job.name)
                return None
            try:
                result = await self._run(conn, job, row["aiProfileId"])
            except Exception as e:
                message = str(e) if isinstance(e, UnrecoverableError) else f"{type(e).__name__}: {e}"
                await conn.execute(
                    '''UPDATE "AIJob" SET "status" = 'failed', "error" = %s, "finishedAt" = %s WHERE "id" = %s''',
                    (message, utcnow(), job.id),
                )
                log.info("job %s %s failed (attempt %d): %s", job.id, job.name, job.attemptsMade + 1, message)
                raise
        log.info("job %s %s succeeded in %d ms", job.id, job.name, (time.monotonic() - started) * 1000)
        return result

    async def _run(self, conn, job: Job, profile_id: str | None) -> dict:
        await conn.execute(
            '''UPDATE "AIJob" SET "status" = 'running', "startedAt" = %s, "error" = NULL, "finishedAt" = NULL
               WHERE "id" = %s''', (utcnow(), job.id),
        )
        profile = await fetch_one(
            conn, 'SELECT "id", "provider", "model", "apiKeyEncrypted" FROM "AIProfile" WHERE "id" = %s', (profile_id,),
        )
        if profile is None:
            raise UnrecoverableError(f"AIJob {job.id} has no AIProfile")
        try:
            decrypt(profile["apiKeyEncrypted"], self.key)
        except CryptoError:
            raise UnrecoverableError(
                f"cannot decrypt AIProfile {profile['id']}.apiKeyEncrypted with the configured API_KEY_ENCRYPTION_KEY"
            ) from None
        for percent in PROGRESS_STEPS:
            await job.updateProgress(percent)
            await conn.execute('UPDATE "AIJob" SET "progress" = %s WHERE "id" = %s', (Jsonb({"percent": percent}), job.id))
        result = stand_in_provider(job.name, job.data.get("input", {}), profile["provider"], profile["model"])
        await asyncio.to_thread(self._write_artifact, job.id, {"jobId": job.id, "type": job.name, "result": result})
        await conn.execute(
            '''UPDATE "AIJob" SET "status" = 'succeeded', "progress" = %s, "result" = %s, "finishedAt" = %s
               WHERE "id" = %s''', (Jsonb({"percent": 100}), Jsonb(result), utcnow(), job.id),
        )
        return result

    def _write_artifact(self, job_id: str, document: dict) -> None:
        data = json.dumps(document, sort_keys=True).encode()
        ensure_bucket(self.store, self.bucket)
        self.store.put_object(
            self.bucket, f"artifacts/{job_id}.json", io.BytesIO(data), len(data), content_type="application/json",
        )
