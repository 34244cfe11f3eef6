"""The one place where errors become HTTP responses: {"error": {"code", "message"}}."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException

from app.errors import VramqError

log = logging.getLogger(__name__)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _describe(exc: RequestValidationError) -> str:
    """One "field: what is wrong" per error, in the words of the check that refused it."""
    parts = []
    for error in exc.errors():
        message = error.get("msg")
        if error.get("type") == "json_invalid":
            parts.append(f"body: not valid JSON ({error['ctx']['error']} at character {error['loc'][-1]})")
            continue
        if error.get("type") == "value_error":  # our validators' own words, without pydantic's "Value error, "
            message = str(error["ctx"]["error"])
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{where or 'body'}: {message}")
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(VramqError)
    async def _vramq(_: Request, exc: VramqError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "validation_error", _describe(exc))

    # A store that is down is a condition to retry after, not a bug: 503, with the error format kept.
    @app.exception_handler(RedisError)
    async def _redis(_: Request, exc: RedisError) -> JSONResponse:
        log.warning("Redis unavailable: %s", exc)
        return _error(503, "redis_unavailable", "Redis is unavailable; try again shortly")

    @app.exception_handler(OperationalError)
    async def _database(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return _error(503, "database_unavailable", "the database is unavailable; try again shortly")

    # What validation let through but the database cannot hold (a NUL in a name on PostgreSQL): bad input.
    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        return _error(422, "invalid_value", f"the database cannot hold a value of this request: {exc.orig}")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))
