"""A Blueprint partner API simulator: the embedded default for the demo and the tests.

It behaves as blueprint-api.md describes Blueprint, including the parts we only assume:
expiring tokens, 403 {"message": "Forbidden"} without the API key, 409 on a duplicate
external id, audio accepted with 202 and then processed asynchronously, signed webhooks
retried like Blueprint retries them, and absolute artifact URLs. It runs on one event
loop and keeps everything in memory.

Control API (no API key; not part of Blueprint):

- ``GET  /_sim/state``     counts, calls by route and status, sessions, webhook deliveries
- ``POST /_sim/faults``    change fault knobs and timings (see FaultUpdate); returns state
- ``PUT  /_sim/callback``  ``{"url": "..."}`` sets (``null`` clears) the webhook callback URL
- ``POST /_sim/reset``     forget all records, tokens, counters; faults back to the config's
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AnyHttpUrl, BaseModel, Field, SecretStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from devtools.simulator.processing import (
    AUDIO_CONTAINERS,
    AudioFacts,
    AudioRejected,
    Organization,
    SessionProcessor,
    inspect_audio,
)
from devtools.simulator.state import (
    Faults,
    FaultUpdate,
    SimulatorState,
    StateView,
    Timings,
)
from gateway.blueprint import paths
from gateway.blueprint.defaults import DEFAULT_API_KEY, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from gateway.blueprint.models import (
    AccessToken,
    AuthenticateRequest,
    ClientCreate,
    ClientPage,
    ClientRecord,
    ClientUpdate,
    ClinicianCreate,
    ClinicianPage,
    ClinicianRecord,
    ClinicianUpdate,
    ErrorBody,
    Partner,
    PartnerUpdate,
    ProgressNote,
    SessionCreate,
    SessionPage,
    SessionRecord,
    Transcript,
)

# The partner, organization and clinic the simulated Blueprint account belongs to.
DEFAULT_PARTNER_ID = "5a1e0000-0000-4000-8000-000000000001"
DEFAULT_ORGANIZATION_ID = "5a1e0000-0000-4000-8000-000000000002"
DEFAULT_CLINIC_ID = "5a1e0000-0000-4000-8000-000000000003"
MAX_UPLOAD_BYTES = 500 * 1024 * 1024

CONTROL_PREFIX = "/_sim"
# Paths outside Blueprint's API: no API key, no faults, not counted.
UNGUARDED_PREFIXES = (CONTROL_PREFIX, "/docs", "/redoc", "/openapi.json")


class SimulatorConfig(BaseModel):
    api_key: SecretStr = SecretStr(DEFAULT_API_KEY)
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: SecretStr = SecretStr(DEFAULT_CLIENT_SECRET)
    partner_id: str = DEFAULT_PARTNER_ID
    organization_id: str = DEFAULT_ORGANIZATION_ID
    clinic_id: str = DEFAULT_CLINIC_ID
    callback_url: str | None = None
    public_url: str | None = Field(
        default=None, description="base of artifact URLs; default: the upload request's base"
    )
    max_upload_bytes: int = Field(default=MAX_UPLOAD_BYTES, gt=0)
    timings: Timings = Field(default_factory=Timings)
    faults: Faults = Field(default_factory=Faults)


def config_from_options(
    *,
    callback_url: str | None = None,
    public_url: str | None = None,
    processing_delay: float = 0.5,
    webhook_retry_interval: float = 1.0,
    token_lifetime: float = 3600.0,
    retry_after: int = 1,
    **faults: object,
) -> SimulatorConfig:
    """The config the ``room-gateway simulator`` flags describe; ValueError names a bad
    flag without a pydantic traceback."""
    try:
        return SimulatorConfig(
            callback_url=callback_url,
            public_url=public_url,
            timings=Timings(
                processing_delay_s=processing_delay,
                webhook_retry_interval_s=webhook_retry_interval,
                token_lifetime_s=token_lifetime,
            ),
            faults=Faults.model_validate({**faults, "retry_after_s": retry_after}),
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(problems) from None


def run(config: SimulatorConfig, host: str, port: int, log_level: str = "info") -> None:
    """Serve until interrupted, with the simulator's own lines (webhook outcomes) logged
    next to uvicorn's."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level)


class CallbackSetting(BaseModel):
    url: AnyHttpUrl | None


def create_app(config: SimulatorConfig | None = None) -> FastAPI:
    config = config or SimulatorConfig()
    state = _fresh_state(config)
    processor = SessionProcessor(
        state,
        Organization(clinic_id=config.clinic_id, organization_id=config.organization_id),
        api_key=config.api_key.get_secret_value(),
        client_secret=config.client_secret.get_secret_value(),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await processor.start()
        yield
        await processor.stop()

    app = FastAPI(
        title="Blueprint partner API simulator",
        description=__doc__,
        lifespan=lifespan,
    )
    app.state.simulator = state
    app.middleware("http")(_gatekeeper(app, state, config))
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    _add_partner_routes(app, state, config)
    _add_record_routes(app, state)
    _add_session_routes(app, state, config, processor)
    _add_control_routes(app, state, config, processor)
    return app


def _fresh_state(config: SimulatorConfig) -> SimulatorState:
    return SimulatorState(
        faults=config.faults.model_copy(),
        timings=config.timings.model_copy(),
        callback_url=config.callback_url,
    )


# --- the API gateway in front of Blueprint: key check, faults, call counting --------------

Handler = Callable[[Request], Awaitable[Response]]


def _gatekeeper(
    app: FastAPI, state: SimulatorState, config: SimulatorConfig
) -> Callable[[Request, Handler], Awaitable[Response]]:
    api_key = config.api_key.get_secret_value()

    async def gatekeeper(request: Request, call_next: Handler) -> Response:
        if request.url.path.startswith(UNGUARDED_PREFIXES):
            return await call_next(request)
        response = await _injected_response(request, state, api_key)
        if response is None:
            response = await call_next(request)
        state.count_call(_route_name(app, request), response.status_code)
        return response

    return gatekeeper


async def _injected_response(
    request: Request, state: SimulatorState, api_key: str
) -> Response | None:
    """The answer Blueprint's edge gives before the API sees the call, if any."""
    if request.headers.get("x-api-key") != api_key:
        return JSONResponse({"message": "Forbidden"}, status_code=403)
    if state.faults.latency_ms:
        await asyncio.sleep(state.faults.latency_ms / 1000)
    status = state.take_injected_status()
    if status == 429:
        headers = {"Retry-After": str(state.faults.retry_after_s)}
        return JSONResponse({"message": "Too Many Requests"}, status_code=429, headers=headers)
    if status is not None:
        return JSONResponse({"message": "Simulated failure"}, status_code=status)
    return None


def _route_name(app: FastAPI, request: Request) -> str:
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match is Match.FULL:
            return f"{request.method} {route.path}"  # type: ignore[attr-defined]
    return f"{request.method} (unknown)"


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"message": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    """422 naming the bad fields, without echoing their values (they may be names)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    return JSONResponse({"message": "Invalid request", "errors": errors}, status_code=422)


def _token_checker(state: SimulatorState) -> Callable[[Request], Awaitable[None]]:
    async def require_token(request: Request) -> None:
        if not state.token_valid(request.headers.get("access-token")):
            raise HTTPException(401, "Unauthorized")

    return require_token


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody, "description": "missing or wrong X-API-Key"},
}


# --- partner and token --------------------------------------------------------------------


def _add_partner_routes(app: FastAPI, state: SimulatorState, config: SimulatorConfig) -> None:
    authorized = [Depends(_token_checker(state))]

    @app.post(paths.AUTHENTICATE, response_model=AccessToken, responses=ERRORS)
    async def authenticate(body: AuthenticateRequest) -> AccessToken:
        secret_ok = body.client_secret.get_secret_value() == config.client_secret.get_secret_value()
        if body.client_id != config.client_id or not secret_ok:
            raise HTTPException(401, "Invalid client credentials")
        token = state.issue_token()
        lifetime = state.timings.token_lifetime_s
        expires_in = int(lifetime) if lifetime.is_integer() else lifetime
        return AccessToken(access_token=token, expires_in=expires_in)

    @app.get(paths.PARTNERS, response_model=Partner, dependencies=authorized, responses=ERRORS)
    async def get_partner() -> Partner:
        return Partner(id=config.partner_id, callback_url=state.callback_url)

    @app.patch(paths.PARTNER, response_model=Partner, dependencies=authorized, responses=ERRORS)
    async def update_partner(partner_id: str, body: PartnerUpdate) -> Partner:
        if partner_id != config.partner_id:
            raise HTTPException(404, "Partner not found")
        state.callback_url = str(body.callback_url)
        return Partner(id=config.partner_id, callback_url=state.callback_url)


# --- clinicians and clients ---------------------------------------------------------------


ExternalId = Annotated[str | None, Query(alias=paths.EXTERNAL_ID_PARAM)]


def _add_record_routes(app: FastAPI, state: SimulatorState) -> None:
    authorized = [Depends(_token_checker(state))]
    conflict: dict[int | str, dict[str, Any]] = {
        **ERRORS,
        409: {"model": ErrorBody, "description": "external id taken"},
    }

    @app.get(paths.CLINICIANS, response_model=ClinicianPage, dependencies=authorized)
    async def find_clinicians(external_id: ExternalId = None) -> ClinicianPage:
        return ClinicianPage(items=state.find_clinicians(external_id))

    @app.post(
        paths.CLINICIANS,
        status_code=201,
        response_model=ClinicianRecord,
        dependencies=authorized,
        responses=conflict,
    )
    async def create_clinician(body: ClinicianCreate) -> ClinicianRecord:
        record = state.create_clinician(body)
        if record is None:
            raise HTTPException(409, "A clinician with this externalId exists")
        return record

    @app.patch(
        paths.CLINICIAN, response_model=ClinicianRecord, dependencies=authorized, responses=ERRORS
    )
    async def update_clinician(clinician_id: str, body: ClinicianUpdate) -> ClinicianRecord:
        record = state.update_clinician(clinician_id, body)
        if record is None:
            raise HTTPException(404, "Clinician not found")
        return record

    @app.get(paths.CLIENTS, response_model=ClientPage, dependencies=authorized)
    async def find_clients(external_id: ExternalId = None) -> ClientPage:
        return ClientPage(items=state.find_clients(external_id))

    @app.post(
        paths.CLIENTS,
        status_code=201,
        response_model=ClientRecord,
        dependencies=authorized,
        responses=conflict,
    )
    async def create_client(body: ClientCreate) -> ClientRecord:
        if body.clinician_id not in state.clinicians:
            raise HTTPException(422, "Unknown clinicianId")
        record = state.create_client(body)
        if record is None:
            raise HTTPException(409, "A client with this externalId exists")
        return record

    @app.patch(paths.CLIENT, response_model=ClientRecord, dependencies=authorized, responses=ERRORS)
    async def update_client(client_id: str, body: ClientUpdate) -> ClientRecord:
        if body.clinician_id not in state.clinicians:
            raise HTTPException(422, "Unknown clinicianId")
        record = state.update_client(client_id, body)
        if record is None:
            raise HTTPException(404, "Client not found")
        return record


# --- sessions, audio, artifacts -----------------------------------------------------------


SessionExternalId = Annotated[str | None, Query(alias=paths.SESSION_EXTERNAL_ID_PARAM)]


def _add_session_routes(
    app: FastAPI, state: SimulatorState, config: SimulatorConfig, processor: SessionProcessor
) -> None:
    authorized = [Depends(_token_checker(state))]

    @app.get(paths.SESSIONS, response_model=SessionPage, dependencies=authorized)
    async def find_sessions(session_external_id: SessionExternalId = None) -> SessionPage:
        return SessionPage(items=state.find_sessions(session_external_id))

    @app.post(
        paths.SESSIONS,
        status_code=201,
        response_model=SessionRecord,
        dependencies=authorized,
        responses={**ERRORS, 409: {"model": ErrorBody}},
    )
    async def create_session(body: SessionCreate) -> SessionRecord:
        if body.clinician_id not in state.clinicians:
            raise HTTPException(422, "Unknown clinicianId")
        if body.client_id not in state.clients:
            raise HTTPException(422, "Unknown clientId")
        record = state.create_session(body)
        if record is None:
            raise HTTPException(409, "A session with this sessionExternalId exists")
        return record

    @app.put(
        paths.SESSION_AUDIO,
        status_code=202,
        response_model=SessionRecord,
        dependencies=authorized,
        responses={**ERRORS, 400: {}, 404: {}, 409: {}, 413: {}, 415: {}, 422: {}},
    )
    async def upload_audio(session_id: str, request: Request) -> SessionRecord:
        """Body: the raw audio file, Content-Type audio/flac or audio/ogg."""
        session = state.sessions.get(session_id)
        if session is None:
            raise HTTPException(404, "Session not found")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in AUDIO_CONTAINERS:
            raise HTTPException(415, "Content-Type must be audio/flac or audio/ogg")
        if session.record.status != "created":
            raise HTTPException(409, "Session already has audio")
        state.set_status(session_id, "receiving")
        try:
            size, facts = await _receive_audio(request, content_type, config.max_upload_bytes)
        except AudioRejected as exc:
            state.set_status(session_id, "created")
            raise HTTPException(exc.status, str(exc)) from None
        except BaseException:
            state.set_status(session_id, "created")
            raise
        session.codec, session.audio_bytes = facts.codec, size
        session.audio_duration_s = facts.duration_s
        state.audio_uploads += 1
        state.set_status(session_id, "processing")
        processor.submit(session_id, config.public_url or str(request.base_url).rstrip("/"))
        return session.record

    @app.get(paths.PROGRESS_NOTE, response_model=ProgressNote, dependencies=authorized)
    async def get_progress_note(note_id: str) -> ProgressNote:
        for session in state.sessions.values():
            if session.progress_note is not None and session.progress_note.id == note_id:
                return session.progress_note
        raise HTTPException(404, "Progress note not found")

    @app.get(paths.SESSION_PROGRESS_NOTE, response_model=ProgressNote, dependencies=authorized)
    async def get_session_progress_note(session_id: str) -> ProgressNote:
        session = state.sessions.get(session_id)
        if session is None or session.progress_note is None:
            raise HTTPException(404, "Progress note not found")
        return session.progress_note

    @app.get(paths.TRANSCRIPT, response_model=Transcript, dependencies=authorized)
    async def get_transcript(session_id: str) -> Transcript:
        session = state.sessions.get(session_id)
        if session is None or session.transcript is None:
            raise HTTPException(404, "Transcript not found")
        return session.transcript


async def _receive_audio(
    request: Request, content_type: str, max_bytes: int
) -> tuple[int, AudioFacts]:
    """Spool the body to a temporary file (it may be 500 MB) and decode it there."""
    with tempfile.NamedTemporaryFile(prefix="blueprint-sim-", suffix=".audio") as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise AudioRejected(413, f"body exceeds {max_bytes} bytes")
            spool.write(chunk)
        if size == 0:
            raise AudioRejected(400, "empty body")
        spool.flush()
        facts = await asyncio.to_thread(inspect_audio, Path(spool.name), content_type)
    return size, facts


# --- control API --------------------------------------------------------------------------


def _add_control_routes(
    app: FastAPI, state: SimulatorState, config: SimulatorConfig, processor: SessionProcessor
) -> None:
    @app.get(f"{CONTROL_PREFIX}/state", response_model=StateView, tags=["simulator control"])
    async def get_state() -> StateView:
        return state.view()

    @app.post(f"{CONTROL_PREFIX}/faults", response_model=StateView, tags=["simulator control"])
    async def set_faults(update: FaultUpdate) -> StateView:
        state.apply(update)
        return state.view()

    @app.put(f"{CONTROL_PREFIX}/callback", response_model=StateView, tags=["simulator control"])
    async def set_callback(setting: CallbackSetting) -> StateView:
        state.callback_url = str(setting.url) if setting.url is not None else None
        return state.view()

    @app.post(f"{CONTROL_PREFIX}/reset", response_model=StateView, tags=["simulator control"])
    async def reset() -> StateView:
        await processor.cancel_all()
        fresh = _fresh_state(config)
        for name in vars(fresh):
            setattr(state, name, getattr(fresh, name))
        return state.view()
