"""``/api/assets/<key>``: raw objects in the bucket ``S3_BUCKET``."""

from __future__ import annotations

import io

from fastapi import APIRouter, HTTPException, Request, Response
from minio.error import S3Error
from starlette.concurrency import run_in_threadpool
from urllib3.exceptions import HTTPError

from aixsss_ops.errors import ServiceUnavailable
from common.store import ensure_bucket

router = APIRouter(prefix="/assets")


async def _call(request: Request, action, *args):
    """Run a blocking minio call off the event loop; a store that cannot be reached is a 503."""
    try:
        return await run_in_threadpool(action, request.app.state.store, request.app.state.env.S3_BUCKET, *args)
    except HTTPError:
        raise ServiceUnavailable(f"object store at {request.app.state.env.S3_ENDPOINT} is unreachable") from None


def _put(client, bucket: str, key: str, data: bytes, content_type: str) -> str:
    ensure_bucket(client, bucket)
    return client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type).etag


def _get(client, bucket: str, key: str) -> tuple[bytes, str]:
    response = client.get_object(bucket, key)
    try:
        return response.read(), response.headers.get("Content-Type", "application/octet-stream")
    finally:
        response.close()
        response.release_conn()


@router.put("/{key:path}", status_code=201)
async def put_asset(key: str, request: Request) -> dict:
    data = await request.body()
    etag = await _call(request, _put, key, data, request.headers.get("content-type", "application/octet-stream"))
    return {"key": key, "size": len(data), "etag": etag}


@router.get("/{key:path}")
async def get_asset(key: str, request: Request) -> Response:
    try:
        data, content_type = await _call(request, _get, key)
    except S3Error as e:
        if e.code in ("NoSuchKey", "NoSuchBucket"):
            raise HTTPException(404, f"asset {key} not found") from None
        raise
    return Response(data, media_type=content_type)
