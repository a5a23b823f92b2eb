"""The application: state built from the environment, health and readiness, the feature routers."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from bullmq import Queue
from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from aixsss_ops.crypto import derive_key
from aixsss_ops.dburl import parse_database_url
from api import assets, errors, jobs, profiles
from common.db import connect
from common.store import object_store

READY_TIMEOUT = 2.0
DEV_WEB_ORIGIN = "http://localhost:5173"


async def _postgres_ok(request: Request) -> None:
    async with await connect(request.app.state.pg, timeout=READY_TIMEOUT) as conn:
        await conn.execute("SELECT 1")


async def _redis_ok(request: Request) -> None:
    client = aioredis.from_url(
        request.app.state.env.REDIS_URL, socket_connect_timeout=READY_TIMEOUT, socket_timeout=READY_TIMEOUT,
    )
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _check(probe, request: Request) -> str:
    try:
        await asyncio.wait_for(probe(request), READY_TIMEOUT + 1)
    except Exception:
        return "unreachable"
    return "ok"


router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    env = request.app.state.env
    return {"ok": True, "ts": int(time.time() * 1000), "version": env.APP_VERSION, "color": env.APP_COLOR}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    postgres, redis = await asyncio.gather(_check(_postgres_ok, request), _check(_redis_ok, request))
    ok = postgres == redis == "ok"
    return JSONResponse({"ok": ok, "checks": {"postgres": postgres, "redis": redis}}, status_code=200 if ok else 503)


def create_app(env) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.queue = Queue(env.AI_QUEUE_NAME, {"connection": env.REDIS_URL})
        try:
            yield
        finally:
            await app.state.queue.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None)
    app.state.env = env
    app.state.pg = parse_database_url(env.DATABASE_URL)
    app.state.key = derive_key(env.API_KEY_ENCRYPTION_KEY.get_secret_value())
    app.state.store = object_store(env)
    app.add_middleware(
        CORSMiddleware, allow_origins=[env.CORS_ORIGIN or DEV_WEB_ORIGIN], allow_credentials=True,
        allow_methods=["*"], allow_headers=["*"],
    )
    errors.install(app)
    for feature in (router, profiles.router, jobs.router, assets.router):
        app.include_router(feature, prefix="/api")
    return app
