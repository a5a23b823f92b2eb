"""``/api/ai-profiles``: a team's provider settings, the keys stored encrypted and never returned."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from aixsss_ops.crypto import encrypt
from common.db import connect, fetch_one, iso, new_id, utcnow

DEFAULT_TEAM_ID = "default"

router = APIRouter(prefix="/ai-profiles")


class NewProfile(BaseModel):
    name: str = Field(min_length=1)
    provider: Literal["deepseek", "kimi", "gemini", "openai_compatible", "doubao_ark"]
    model: str = Field(default="default", min_length=1)
    apiKey: str = Field(min_length=1)
    imageApiKey: str | None = None
    videoApiKey: str | None = None
    teamId: str | None = None


_PUBLIC_COLUMNS = '''"id", "teamId", "name", "provider", "model", "createdAt",
    "imageApiKeyEncrypted" IS NOT NULL AS "hasImageApiKey", "videoApiKeyEncrypted" IS NOT NULL AS "hasVideoApiKey"'''


def _public(row: dict) -> dict:
    return {**row, "hasApiKey": True, "createdAt": iso(row["createdAt"])}


@router.post("", status_code=201)
async def create_profile(body: NewProfile, request: Request) -> dict:
    key = request.app.state.key
    team_id, now = body.teamId or DEFAULT_TEAM_ID, utcnow()
    secrets = [None if plain is None else encrypt(plain, key) for plain in (body.apiKey, body.imageApiKey, body.videoApiKey)]
    async with await connect(request.app.state.pg) as conn, conn.transaction():
        await conn.execute(
            '''INSERT INTO "Team" ("id", "name", "createdAt", "updatedAt") VALUES (%s, %s, %s, %s)
               ON CONFLICT ("id") DO NOTHING''',
            (team_id, team_id, now, now),
        )
        row = await fetch_one(
            conn,
            '''INSERT INTO "AIProfile" ("id", "teamId", "name", "provider", "model", "apiKeyEncrypted",
                   "imageApiKeyEncrypted", "videoApiKeyEncrypted", "createdAt", "updatedAt")
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING ''' + _PUBLIC_COLUMNS,
            (new_id(), team_id, body.name, body.provider, body.model, *secrets, now, now),
        )
        return _public(row)


@router.get("")
async def list_profiles(request: Request) -> list[dict]:
    async with await connect(request.app.state.pg) as conn:
        cursor = await conn.execute(f'SELECT {_PUBLIC_COLUMNS} FROM "AIProfile" ORDER BY "createdAt", "id"')
        return [_public(row) for row in await cursor.fetchall()]
