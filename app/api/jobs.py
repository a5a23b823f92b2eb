"""``/api/ai-jobs``: an ``"AIJob"`` row plus a BullMQ job with the same id, as the real api enqueues it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from psycopg.errors import ForeignKeyViolation
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from common.db import connect, fetch_one, iso, new_id, utcnow

ENQUEUE_TIMEOUT = 5.0
JOB_OPTIONS = {
    "attempts": 2,
    "backoff": {"type": "exponential", "delay": 1000},
    "removeOnComplete": {"count": 500},
    "removeOnFail": {"count": 500},
}

router = APIRouter(prefix="/ai-jobs")


class NewJob(BaseModel):
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    profileId: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)
    projectId: str | None = None


def _public(row: dict) -> dict:
    return {**row, **{k: iso(row[k]) for k in ("createdAt", "startedAt", "finishedAt")}}


@router.post("", status_code=201)
async def enqueue(body: NewJob, request: Request) -> dict:
    async with await connect(request.app.state.pg) as conn:
        profile = await fetch_one(conn, 'SELECT "teamId" FROM "AIProfile" WHERE "id" = %s', (body.profileId,))
        if profile is None:
            raise HTTPException(404, f"AIProfile {body.profileId} not found")
        try:
            cursor = await conn.execute(
                '''INSERT INTO "AIJob" ("id", "teamId", "projectId", "aiProfileId", "type", "createdAt")
                   VALUES (%s, %s, %s, %s, %s, %s) RETURNING *''',
                (new_id(), profile["teamId"], body.projectId, body.profileId, body.type, utcnow()),
            )
        except ForeignKeyViolation:
            raise HTTPException(404, f"Project {body.projectId} not found") from None
        row = await cursor.fetchone()
        data = {"teamId": row["teamId"], "projectId": body.projectId, "aiProfileId": body.profileId, "input": body.input}
        try:
            await asyncio.wait_for(
                request.app.state.queue.add(body.type, data, {**JOB_OPTIONS, "jobId": row["id"]}), ENQUEUE_TIMEOUT,
            )
        except (TimeoutError, RedisError, OSError):
            await conn.execute(
                '''UPDATE "AIJob" SET "status" = 'failed', "error" = 'could not be enqueued', "finishedAt" = %s
                   WHERE "id" = %s''', (utcnow(), row["id"]),
            )
            raise HTTPException(503, "the job queue (redis) is unreachable; the job was marked failed") from None
    return _public(row)


@router.get("/{job_id}")
async def get_job(job_id: str, request: Request) -> dict:
    async with await connect(request.app.state.pg) as conn:
        row = await fetch_one(conn, 'SELECT * FROM "AIJob" WHERE "id" = %s', (job_id,))
    if row is None:
        raise HTTPException(404, f"AIJob {job_id} not found")
    return _public(row)
