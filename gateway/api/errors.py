"""Error answers: every failure the gateway understands is a 4xx with a reason.

Validation errors name the field and the rule but never echo the input: the input may be
a person's name, and error bodies end up in partner logs.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway.errors import Conflict, GatewayError, InvalidReference, NotFound
from gateway.store import DatabaseUnavailable

logger = logging.getLogger(__name__)
STATUS = {NotFound: 404, Conflict: 409, InvalidReference: 422}


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(DatabaseUnavailable, _store_busy)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


async def _store_busy(_: Request, exc: Exception) -> JSONResponse:
    """The database stayed locked past busy_timeout (an admin command holding it, a full
    disk): our problem, and a passing one, so 503 and a hint to retry; Blueprint does."""
    logger.error("database unavailable: %s", type(exc).__name__)
    return JSONResponse(
        {"detail": "the gateway's database is busy; retry shortly"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _gateway_error(_: Request, exc: Exception) -> JSONResponse:
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
    return JSONResponse({"detail": str(exc)}, status_code=status)
