"""Every error answer of the HTTP API: RFC 9457 problem details with a stable ``code``.

One format for all of them (``application/problem+json``)::

    {"type": "urn:room-audio:problem:room_busy", "title": "Room busy", "status": 409,
     "detail": "room room-1 is already recording a session (ses_...)", "code": "room_busy",
     "instance": "/v1/sessions"}

``code`` is what a partner switches on; it never changes meaning. ``detail`` is for people
and may change. Validation errors add ``errors``: one entry per field, naming the field and
the rule but never echoing the input (the input may be a person's name, and error bodies
end up in partner logs).

Raise :class:`gateway.errors.GatewayError` (domain code) or :class:`ApiError` (routes) with a
code from :data:`CATALOGUE`; :func:`problems` documents an operation's codes in the spec.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import Conflict, GatewayError, InvalidReference, NotFound
from gateway.ingest.errors import IngestError
from gateway.store import DatabaseUnavailable

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:room-audio:problem:"
STATUS = {NotFound: 404, Conflict: 409, InvalidReference: 422}


@dataclass(frozen=True)
class ErrorCode:
    status: int
    title: str
    meaning: str


def _codes(*entries: tuple[str, int, str, str]) -> dict[str, ErrorCode]:
    return {code: ErrorCode(status, title, meaning) for code, status, title, meaning in entries}


CATALOGUE: dict[str, ErrorCode] = _codes(
    # --- any request -------------------------------------------------------------------
    ("invalid_request", 422, "Invalid request",
     "the body, path or query breaks a rule; `errors` names each field"),
    ("malformed_request", 400, "Malformed request", "the request cannot be read at all"),
    ("not_found", 404, "Not found", "no such path"),
    ("method_not_allowed", 405, "Method not allowed", "the path exists, the method does not"),
    ("body_too_large", 413, "Body too large", "the body is over the size limit"),
    ("unsupported_media_type", 415, "Unsupported media type", "wrong Content-Type"),
    ("store_busy", 503, "Database busy",
     "the gateway's database is busy; retry after Retry-After seconds"),
    ("internal_error", 500, "Internal error", "a fault of the gateway; it is logged"),
    # --- partner authentication --------------------------------------------------------
    ("missing_token", 401, "Missing token", "no `Authorization: Bearer ...` header"),
    ("invalid_token", 401, "Invalid token", "the bearer token is unknown or revoked"),
    # --- clinicians, clients, rooms, sessions ------------------------------------------
    ("clinician_not_found", 404, "Clinician not found", "no clinician with this external id"),
    ("client_not_found", 404, "Client not found", "no client with this external id"),
    ("room_not_found", 404, "Room not found", "no provisioned room with this id"),
    ("session_not_found", 404, "Session not found", "no session with this id"),
    ("unknown_clinician", 422, "Unknown clinician",
     "the body names a clinician not PUT yet; PUT it first"),
    ("unknown_client", 422, "Unknown client", "the body names a client not PUT yet; PUT it first"),
    ("room_not_provisioned", 422, "Room not provisioned",
     "the body names a room with no device (room-gateway device add)"),
    ("room_revoked", 422, "Room revoked",
     "the room's device is revoked (room-gateway device add ROOM --rotate admits it again)"),
    ("room_busy", 409, "Room busy", "the room is recording another session"),
    ("device_busy", 409, "Device busy",
     "the room's device reports it is recording a session it started itself"),
    ("room_no_answer", 504, "Room did not answer",
     "the room's device did not answer in time: offline, or busy; the detail says which"),
    ("relay_unavailable", 503, "Relay unavailable", "the gateway cannot reach the MQTT broker now"),
    ("relay_not_configured", 409, "No relay",
     "this gateway has no MQTT relay (gateway.mqtt.broker_url is empty): no room to ask"),
    ("room_do_not_record", 409, "Room does not record",
     "the room's \"do not record\" switch is on; it is released in the room"),
    ("session_not_recording", 409, "Session not recording",
     "the session is past recording: it can no longer be paused or resumed"),
    ("audio_already_attached", 409, "Audio already attached",
     "the session is past the point where audio can be attached"),
    ("clinician_has_clients", 409, "Clinician has clients",
     "the clinician still has clients here; DELETE them first"),
    ("person_in_session", 409, "In a session",
     "a session of this clinician or client is not finished; stop or cancel it first"),
    ("session_not_cancellable", 409, "Session not cancellable",
     "the session's audio is at Blueprint already (or going there)"),
    ("invalid_cursor", 422, "Invalid cursor", "the cursor is not one this API gave out"),
    ("idempotency_key_reused", 422, "Idempotency key reused",
     "this Idempotency-Key was used for a different request"),
    ("blueprint_refused", 502, "Blueprint refused",
     "Blueprint refused the record; the detail says why; PUT again to retry"),
    ("audio_unreadable", 400, "Audio unreadable", "the audio body cannot be decoded"),
    # --- the console ---------------------------------------------------------------------
    ("console_login_required", 401, "Sign-in required", "sign in with an admin token"),
    ("invalid_admin_token", 401, "Invalid admin token", "the admin token is unknown or revoked"),
    ("job_not_retryable", 409, "Job not retryable", "no failed job with this id"),
    ("device_not_found", 404, "Device not found", "no device with this id"),
    ("device_not_added", 409, "Device not added", "the device's credentials were not issued"),
    # --- Blueprint webhooks ------------------------------------------------------------
    ("bad_signature", 401, "Bad signature", "missing or wrong X-Blueprint-Signature"),
    ("not_a_webhook", 400, "Not a webhook", "signed, but not JSON {eventType, payload}"),
    ("invalid_webhook_payload", 422, "Invalid webhook payload",
     "a known event type whose payload lacks a field"),
    # --- room devices (ingest) ---------------------------------------------------------
    ("device_unauthenticated", 401, "Device unauthenticated", "unknown ingest token"),
    ("device_forbidden", 403, "Device forbidden", "this device may not do this"),
    ("device_revoked", 403, "Device revoked", "the device's credentials are revoked"),
    ("foreign_session", 403, "Foreign session", "the session belongs to another room or device"),
    ("chunk_conflict", 409, "Chunk conflict",
     "a different chunk is stored under this seq (or in the manifest)"),
    ("session_assembled", 409, "Session assembled",
     "the session's audio is assembled already; a new seq cannot join it"),
    ("chunk_rejected", 422, "Chunk rejected", "the chunk cannot be opened or trusted"),
    ("wrong_key", 422, "Wrong key",
     "the chunk is sealed to another key than this gateway's: the device's"
     " gateway_public_key is wrong (GET .../sealing-key gives the gateway's fingerprint)"),
    ("path_mismatch", 422, "Path mismatch", "the chunk's or manifest's ids differ from the path"),
    ("undecodable_audio", 422, "Undecodable audio", "the chunk opens; its audio does not decode"),
    ("wrong_sample_rate", 422, "Wrong sample rate", "the chunk's audio is not 16 kHz"),
    ("duration_mismatch", 422, "Duration mismatch",
     "the chunk's audio is not as long as its header says"),
    ("manifest_mismatch", 422, "Manifest mismatch",
     "the manifest's size or times of a chunk differ from the chunk held"),
    ("unclaimed_quota", 429, "Unclaimed quota",
     "the device has as many sessions no partner started here as it may"
     " (ingest.max_unclaimed_sessions); it keeps this one until the operator frees some"
     " with `room-gateway device unclaimed ROOM --delete ID`"),
    ("ingest_refused", 400, "Ingest refused", "the device's request is refused"),
    ("ingest_unavailable", 503, "Ingest unavailable", "the gateway cannot take audio now; retry"),
    ("no_sealing_key", 503, "No sealing key", "the gateway has no sealing key yet"),
    # --- enrollment --------------------------------------------------------------------
    ("enrollment_refused", 404, "Enrollment refused",
     "no such enrollment code, or it was used or has expired: `room-gateway device add"
     " ROOM --rotate` makes a new one"),
    ("too_many_attempts", 429, "Too many attempts",
     "too many wrong enrollment codes from this address; retry after Retry-After seconds"),
)  # fmt: skip


class ProblemFieldError(BaseModel):
    field: str = Field(description="where: body.first_name, path.session_id, query.limit")
    message: str = Field(description="the rule broken (never the value sent)")
    type: str = Field(description="pydantic's error type, e.g. missing, string_pattern_mismatch")


class Problem(BaseModel):
    """RFC 9457 problem details; ``code`` is stable, ``detail`` is for people."""

    type: str = Field(description=f"{TYPE_PREFIX}<code>", examples=[f"{TYPE_PREFIX}room_busy"])
    title: str = Field(description="the code's short summary", examples=["Room busy"])
    status: int = Field(description="the HTTP status", examples=[409])
    detail: str = Field(
        description="what happened, with ids (never names)",
        examples=["room room-1 is already recording a session (ses_0123456789abcdef0123)"],
    )
    code: str = Field(description="stable, machine-readable", examples=["room_busy"])
    instance: str | None = Field(default=None, description="the request's path")
    errors: list[ProblemFieldError] | None = Field(
        default=None, description="invalid_request only: each field and its rule"
    )


class ApiError(Exception):
    """An error a route raises itself (auth, media type, ...): status from the catalogue."""

    def __init__(
        self, code: str, detail: str, *, status: int | None = None, headers: Mapping[str, str] = {}
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status if status is not None else CATALOGUE[code].status
        self.headers = dict(headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(IngestError, _ingest_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(DatabaseUnavailable, _store_busy)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(_BodyLimitAsProblem)
    build_spec = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_problem_schema(build_spec())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def problem_response(
    request: Request,
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    errors: list[ProblemFieldError] | None = None,
) -> JSONResponse:
    entry = CATALOGUE.get(code)
    if entry is None:
        logger.warning("error code %s is not in the catalogue", code)
    body = Problem(
        type=TYPE_PREFIX + code,
        title=entry.title if entry else code.replace("_", " ").capitalize(),
        status=status,
        detail=detail,
        code=code,
        instance=request.url.path,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=dict(headers or {}),
        media_type=MEDIA_TYPE,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        ProblemFieldError(
            field=".".join(str(part) for part in error["loc"]),
            message=error["msg"],
            type=error["type"],
        )
        for error in exc.errors()
    ]
    detail = "; ".join(f"{error.field}: {error.message}" for error in errors)[:500]
    return problem_response(request, 422, "invalid_request", detail, errors=errors)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem_response(request, exc.status, exc.code, str(exc), headers=exc.headers)


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
    return problem_response(request, status, exc.code, str(exc))


async def _ingest_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IngestError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return problem_response(request, exc.status, exc.code, str(exc), headers=headers)


HTTP_CODES = {
    400: "malformed_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own answers (no route, wrong method, body over the limit)."""
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, ClientDisconnect):  # FastAPI's "error parsing the body"
        return await _client_gone(request, exc.__cause__)
    code = HTTP_CODES.get(exc.status_code, "invalid_request")
    detail = exc.detail if isinstance(exc.detail, str) else CATALOGUE[code].meaning
    return problem_response(request, exc.status_code, code, detail, headers=exc.headers)


async def _store_busy(request: Request, exc: Exception) -> JSONResponse:
    """The database stayed locked past busy_timeout (an admin command holding it, a full
    disk): our problem, and a passing one, so 503 and a hint to retry; Blueprint does."""
    logger.error("database unavailable: %s", type(exc).__name__)
    return problem_response(
        request,
        503,
        "store_busy",
        "the gateway's database is busy; retry shortly",
        headers={"Retry-After": "1"},
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Last resort: the traceback goes to the log, never to the caller."""
    logger.error(
        "%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc
    )
    return problem_response(request, 500, "internal_error", "the gateway failed; see its log")


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    """The client closed its connection before sending all of its body: an everyday event
    (a device losing its network, a timeout on its side), one line, not a traceback. The
    answer goes nowhere (uvicorn drops it); nothing was stored."""
    logger.info(
        "%s %s: client disconnected before its body was read", request.method, request.url.path
    )
    return problem_response(request, 400, "malformed_request", "the client disconnected")


class _BodyLimitAsProblem:
    """Starlette's body limit answers 413 in plain text from inside the route, past the
    exception handlers: answer it as a problem like every other error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def send_problem(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(b"text/plain"):
                    replaced = True
                    body = Problem(
                        type=TYPE_PREFIX + "body_too_large",
                        title=CATALOGUE["body_too_large"].title,
                        status=413,
                        detail="the request body is over this path's size limit",
                        code="body_too_large",
                        instance=scope.get("path"),
                    ).model_dump_json(exclude_none=True)
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 413,
                            "headers": [
                                (b"content-type", MEDIA_TYPE.encode()),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body.encode()})
                    return
            if replaced:
                return
            await send(message)

        await self.app(scope, receive, send_problem)


# --- the spec ---------------------------------------------------------------------------------


def problems(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these codes: one entry per status, its schema restricting
    ``code`` to the ones listed, an example for each."""
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(CATALOGUE[code].status, []).append(code)
    return {status: _documented(status, listed) for status, listed in sorted(by_status.items())}


def _documented(status: int, codes: Iterable[str]) -> dict[str, Any]:
    codes = list(codes)
    return {
        "description": "; ".join(f"`{code}`: {CATALOGUE[code].meaning}" for code in codes),
        "content": {
            MEDIA_TYPE: {
                "schema": {
                    "allOf": [{"$ref": "#/components/schemas/Problem"}],
                    "properties": {"code": {"enum": codes}},
                },
                "examples": {
                    code: {
                        "summary": CATALOGUE[code].title,
                        "value": {
                            "type": TYPE_PREFIX + code,
                            "title": CATALOGUE[code].title,
                            "status": status,
                            "detail": CATALOGUE[code].meaning,
                            "code": code,
                        },
                    }
                    for code in codes
                },
            }
        },
    }


def documented_codes(operation: Mapping[str, Any], status: int) -> list[str]:
    """The codes an operation of the spec documents for ``status`` (tests read this)."""
    response = operation.get("responses", {}).get(str(status), {})
    schema = response.get("content", {}).get(MEDIA_TYPE, {}).get("schema", {})
    return list(schema.get("properties", {}).get("code", {}).get("enum", []))


def add_problem_schema(spec: dict[str, Any]) -> None:
    """Put the Problem model into ``components`` (the responses above refer to it)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(
        Problem.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs", {})
    )
    schemas["Problem"] = {
        key: value
        for key, value in Problem.model_json_schema(
            ref_template="#/components/schemas/{model}"
        ).items()
        if key != "$defs"
    }
