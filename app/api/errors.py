"""One error shape for every failure, as the real api's global exception filter gives it."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from aixsss_ops.errors import ServiceUnavailable
from common.db import iso, utcnow


def error_response(request: Request, status: int, message) -> JSONResponse:
    body = {"statusCode": status, "message": message, "error": HTTPStatus(status).phrase,
            "path": request.url.path, "timestamp": iso(utcnow())}
    return JSONResponse(body, status_code=status)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error_response(request, exc.status_code, exc.detail)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Only where and what: the rejected input may be an API key.
    problems = [".".join(map(str, e["loc"][1:])) + f": {e['msg']}" for e in exc.errors()]
    return error_response(request, 400, problems)


async def _unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
    return error_response(request, 503, exc.message)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, 500, "Internal server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(ServiceUnavailable, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
