"""``/console``: a page for clinic IT, served by the gateway, behind an admin token.

Rooms (online, recording, paused, backlog, microphone, last heartbeat) live over
server-sent events; sessions with their timelines and errors; failed jobs with a retry
button; devices with add, rotate and revoke. Ids, states and numbers only: no names, no
note text. The page and its script and style come from this package (no external asset,
a Content-Security-Policy that allows none), so it works offline.

Sign-in: an admin token (``room-gateway admin-token create``, never a partner token) is
posted once and kept in an HttpOnly, SameSite=Strict cookie scoped to /console; changes
also need the ``X-Console`` header, which a cross-site form cannot send.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from gateway.api.deps import Service
from gateway.api.errors import ApiError
from gateway.api.models import RoomOut, SessionOut, SessionSummary, timestamp
from gateway.api.room_views import all_rooms
from gateway.api.session_views import session_out
from gateway.devices import registry
from gateway.devices.provisioning import Provisioning, ProvisioningError
from gateway.devices.snippet import write_bundle
from gateway.jobs import queue as jobs
from gateway.partner import tokens
from gateway.service import GatewayService
from gateway.sessions import states as sessions
from gateway.sessions.states import SessionFilter
from gateway.store import Connection
from protocol.ids import ID_DESCRIPTION, ID_PATTERN

STATIC = Path(__file__).with_name("static")
COOKIE = "room_console"
CHANGE_HEADER = "X-Console"
EVENT_POLL_S = 0.5
KEEPALIVE_S = 15.0
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(prefix="/console", include_in_schema=False)


# --- sign-in ----------------------------------------------------------------------------------


class Login(BaseModel):
    token: str = Field(min_length=1, max_length=200)


async def require_admin(request: Request, service: Service) -> None:
    token = request.cookies.get(COOKIE)
    if not token:
        raise ApiError("console_login_required", "sign in with an admin token")
    if not await service.db.run(tokens.is_stored, token, "admin", write=False):
        raise ApiError("invalid_admin_token", "the admin token is unknown or revoked")
    if request.method not in ("GET", "HEAD") and request.headers.get(CHANGE_HEADER) != "1":
        raise ApiError("console_login_required", f"changes need the {CHANGE_HEADER} header")


Admin = Depends(require_admin)


@router.post("/login", status_code=204)
async def login(body: Login, request: Request, service: Service) -> Response:
    if not await service.db.run(tokens.is_stored, body.token, "admin", write=False):
        raise ApiError("invalid_admin_token", "the admin token is unknown or revoked")
    response = Response(status_code=204)
    response.set_cookie(
        COOKIE,
        body.token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/console",
    )
    return response


@router.post("/logout", status_code=204)
async def logout() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/console")
    return response


# --- the page -----------------------------------------------------------------------------------


@router.get("")
@router.get("/", include_in_schema=False)  # what a person types as often
async def page() -> FileResponse:
    return _static("console.html", "text/html; charset=utf-8")


@router.get("/console.js")
async def script() -> FileResponse:
    return _static("console.js", "text/javascript; charset=utf-8")


@router.get("/console.css")
async def style() -> FileResponse:
    return _static("console.css", "text/css; charset=utf-8")


def _static(name: str, media_type: str) -> FileResponse:
    return FileResponse(
        STATIC / name,
        media_type=media_type,
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
    )


# --- what the page shows ------------------------------------------------------------------------


class ConsoleRoom(BaseModel):
    """A room for the console: ids, states and numbers (no label, no name)."""

    room: str
    device: str
    online: bool | None
    recorder: str | None
    active_session_id: str | None
    backlog_chunks: int | None
    backlog_bytes: int | None
    microphone: str | None
    reason: str | None
    last_heartbeat_at: str | None
    last_seen_at: str | None

    @classmethod
    def of(cls, room: RoomOut) -> ConsoleRoom:
        fields = room.model_dump(mode="json")
        return cls(**{name: fields.get(name) for name in cls.model_fields})


class FailedJob(BaseModel):
    job_id: int
    kind: str
    session_id: str | None
    attempts: int
    last_error: str | None
    failed_at: str


class DeviceRow(BaseModel):
    room: str
    status: str
    credentials: str | None
    issued_at: str | None
    revoked_at: str | None


class DeviceIn(BaseModel):
    room: str = Field(pattern=ID_PATTERN, description=ID_DESCRIPTION)


class DeviceIssued(BaseModel):
    room: str
    status: str
    files: str = Field(description="where agent.toml and the credential files are (mode 0600)")
    enrollment_code: str | None = Field(
        description="a one-time code the device can enroll with, when enrollment is available"
    )
    enroll_command: str | None = Field(
        default=None, description="what to run on the device: room-agent enroll URL CODE"
    )
    enrollment_expires_at: str | None = None


@router.get("/api/whoami", dependencies=[Admin])
async def whoami() -> dict[str, str]:
    return {"role": "admin"}


@router.get("/api/rooms", dependencies=[Admin])
async def rooms(service: Service) -> list[ConsoleRoom]:
    return [ConsoleRoom.of(room) for room in await service.db.run(all_rooms, write=False)]


@router.get("/api/sessions", dependencies=[Admin])
async def recent_sessions(service: Service, state: str | None = None) -> list[SessionSummary]:
    where = SessionFilter(states=[state] if state else None)  # type: ignore[list-item]
    found = await service.db.run(sessions.search, where, 50, None, write=False)
    return [SessionSummary.of(session, service.lifecycle.environment) for session in found]


@router.get("/api/sessions/{session_id}", dependencies=[Admin])
async def one_session(session_id: str, service: Service) -> SessionOut:
    return await service.db.run(session_out, session_id, service.lifecycle.environment, write=False)


@router.get("/api/jobs", dependencies=[Admin])
async def failed_jobs(service: Service) -> list[FailedJob]:
    found = await service.db.run(jobs.list_jobs, "failed", 100, write=False)
    return [
        FailedJob(
            job_id=job.id,
            kind=job.kind,
            session_id=job.session_id,
            attempts=job.attempts,
            last_error=job.last_error,
            failed_at=timestamp(job.updated_at).isoformat(),
        )
        for job in found
    ]


@router.post("/api/jobs/{job_id}/retry", dependencies=[Admin])
async def retry_job(job_id: int, service: Service) -> dict[str, Any]:
    """As ``room-gateway jobs retry``: fresh attempts; its session resumes where it failed."""

    def retry(conn: Connection) -> jobs.Job | None:
        job = jobs.retry(conn, job_id)
        if job is not None and job.session_id is not None:
            service.lifecycle.resumed(conn, job.session_id)
        return job

    job = await service.db.run(retry)
    if job is None:
        raise ApiError("job_not_retryable", f"no failed job {job_id}")
    service.worker.wake()
    return {"job_id": job.id, "kind": job.kind, "state": job.state}


@router.get("/api/devices", dependencies=[Admin])
async def devices(service: Service) -> list[DeviceRow]:
    found = await service.db.run(registry.list_devices, write=False)
    return [
        DeviceRow(
            room=device.id,
            status=device.status,
            credentials=device.credential_kind,
            issued_at=_iso(device.credentials_issued_at),
            revoked_at=_iso(device.revoked_at),
        )
        for device in found
    ]


@router.post("/api/devices", dependencies=[Admin], status_code=201)
async def add_device(body: DeviceIn, service: Service) -> DeviceIssued:
    return await asyncio.to_thread(_issue, service, body.room, False)


@router.post("/api/devices/{room}/rotate", dependencies=[Admin])
async def rotate_device(room: str, service: Service) -> DeviceIssued:
    if await service.db.run(registry.get, room, write=False) is None:
        raise ApiError("device_not_found", f"no device {room}")
    return await asyncio.to_thread(_issue, service, room, True)


@router.post("/api/devices/{room}/revoke", dependencies=[Admin])
async def revoke_device(room: str, service: Service) -> DeviceRow:
    def revoke() -> None:
        Provisioning(service.settings, service.db).revoke(room)

    try:
        await asyncio.to_thread(revoke)
    except ProvisioningError as exc:
        raise ApiError("device_not_found", str(exc).splitlines()[0]) from None
    device = await service.db.run(registry.get, room, write=False)
    assert device is not None
    return DeviceRow(
        room=device.id,
        status=device.status,
        credentials=device.credential_kind,
        issued_at=_iso(device.credentials_issued_at),
        revoked_at=_iso(device.revoked_at),
    )


def _issue(service: GatewayService, room: str, rotate: bool) -> DeviceIssued:
    """Blocking (key files, the broker's password file): issue the device's credentials and
    write its files as ``room-gateway device add`` does; secrets never reach the page."""
    settings = service.settings
    try:
        added = Provisioning(settings, service.db).add(room, None, rotate)
    except ProvisioningError as exc:
        raise ApiError("device_not_added", str(exc).splitlines()[0]) from None
    out = settings.state_dir / "devices" / room
    write_bundle(added.bundle, out, Path(settings.devices.install_dir))
    return DeviceIssued(
        room=room,
        status=added.device.status,
        files=str(out),
        enrollment_code=added.enrollment.code,
        enroll_command=f"room-agent enroll {settings.devices.gateway_url} {added.enrollment.code}",
        enrollment_expires_at=_iso(added.enrollment.expires_at),
    )


# --- live updates -------------------------------------------------------------------------------


@router.get("/api/events", dependencies=[Admin])
async def events(request: Request, service: Service) -> StreamingResponse:
    """Server-sent events: ``rooms`` (every room, when any changes) and ``changed`` (a digest
    of sessions and failed jobs, when it changes: the page then reloads those lists)."""

    async def stream() -> AsyncIterator[bytes]:
        last_rooms = last_changed = None
        last_sent = time.monotonic()
        yield b"retry: 1000\n\n"
        while not await request.is_disconnected():
            rooms_now = json.dumps(
                [
                    ConsoleRoom.of(r).model_dump()
                    for r in await service.db.run(all_rooms, write=False)
                ]
            )
            changed_now = await service.db.run(_change_digest, write=False)
            if rooms_now != last_rooms:
                last_rooms = rooms_now
                yield f"event: rooms\ndata: {rooms_now}\n\n".encode()
                last_sent = time.monotonic()
            if changed_now != last_changed:
                last_changed = changed_now
                yield f"event: changed\ndata: {json.dumps(changed_now)}\n\n".encode()
                last_sent = time.monotonic()
            if time.monotonic() - last_sent > KEEPALIVE_S:
                yield b": keepalive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(EVENT_POLL_S)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _change_digest(conn: Connection) -> str:
    sessions_row = conn.execute("SELECT COUNT(*), MAX(updated_at) FROM sessions").fetchone()
    jobs_row = conn.execute(
        "SELECT COUNT(*), MAX(updated_at) FROM jobs WHERE state = 'failed'"
    ).fetchone()
    devices_row = conn.execute(
        "SELECT COUNT(*), MAX(credentials_issued_at), MAX(revoked_at) FROM rooms"
    ).fetchone()
    text = json.dumps([list(sessions_row), list(jobs_row), list(devices_row)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _iso(seconds: float | None) -> str | None:
    return timestamp(seconds).isoformat() if seconds is not None else None
