"""The room devices' HTTPS audio path (protocol/ingest.py): sealed chunks, then manifests.

Separate from the partner API: a device authenticates with its own ingest token (never a
partner token) and may only use paths naming itself. Answers follow the protocol's table;
every refusal is a 4xx with a reason (ids and codes only), logged the same way.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.deps import Service
from gateway.api.models import Problem
from gateway.devices.registry import Device
from gateway.ingest.errors import IngestError
from protocol.ids import ID_DESCRIPTION, ID_PATTERN
from protocol.ingest import (
    CHUNK_PATH,
    CLOSE_PATH,
    SEALED_CHUNK_CONTENT_TYPE,
    ChunkReceipt,
    CloseReceipt,
)
from protocol.manifest import SessionManifest

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="The device's ingest token")
DeviceIdPath = Annotated[str, Path(pattern=ID_PATTERN, description=ID_DESCRIPTION)]
SessionIdPath = Annotated[str, Path(pattern=ID_PATTERN, description=ID_DESCRIPTION)]
SeqPath = Annotated[int, Path(ge=0, le=10_000_000)]

ANSWERS = {
    401: {"model": Problem, "description": "missing or unknown ingest token"},
    403: {"model": Problem, "description": "revoked device, or another device's path/session"},
    409: {"model": Problem, "description": "a different chunk is stored under this seq"},
    413: {"description": "body larger than ingest.max_chunk_bytes"},
    422: {"model": Problem, "description": "cannot be opened, or does not match the path"},
    503: {"model": Problem, "description": "the gateway cannot take audio now; retry"},
}

router = APIRouter(tags=["room devices"], responses=ANSWERS)


def _refused(exc: IngestError, what: str) -> HTTPException:
    logger.warning("ingest: %s refused (%d): %s", what, exc.status, exc)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return HTTPException(exc.status, str(exc), headers)


async def authenticated_device(
    device_id: DeviceIdPath,
    service: Service,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Device:
    """The device named in the path, if the bearer token is its own and not revoked.
    Checked before the body is read or validated."""
    token = credentials.credentials if credentials is not None else None
    try:
        return await service.ingest.authenticate(token, device_id)
    except IngestError as exc:
        service.metrics.ingested("auth", exc.status)
        raise _refused(exc, f"device {device_id}") from None


AuthenticatedDevice = Annotated[Device, Depends(authenticated_device)]


@router.put(
    CHUNK_PATH,
    response_model=ChunkReceipt,
    responses={415: {"model": Problem, "description": "not a sealed chunk"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                SEALED_CHUNK_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def put_chunk(
    device: AuthenticatedDevice,
    session_id: SessionIdPath,
    seq: SeqPath,
    request: Request,
    service: Service,
) -> ChunkReceipt:
    """A sealed chunk; 200 once it is on disk (fsynced): the device may delete its copy."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != SEALED_CHUNK_CONTENT_TYPE:
        raise HTTPException(415, f"Content-Type must be {SEALED_CHUNK_CONTENT_TYPE}")
    blob = await request.body()
    try:
        receipt = await service.ingest.receive_chunk(device.id, session_id, seq, blob)
    except IngestError as exc:
        service.metrics.ingested("chunk", exc.status)
        raise _refused(exc, f"device {device.id} session {session_id} chunk {seq}") from None
    service.metrics.ingested("chunk", 200, 0 if receipt.duplicate else len(blob))
    return receipt


@router.post(CLOSE_PATH, response_model=CloseReceipt)
async def close_session(
    device: AuthenticatedDevice,
    session_id: SessionIdPath,
    manifest: SessionManifest,
    service: Service,
) -> CloseReceipt:
    """The session's manifest: assembled (and its upload queued) once every chunk listed
    is here; ``missing`` lists the seqs still to come."""
    try:
        receipt = await service.ingest.close(device.id, session_id, manifest)
    except IngestError as exc:
        service.metrics.ingested("manifest", exc.status)
        raise _refused(exc, f"device {device.id} session {session_id} manifest") from None
    service.metrics.ingested("manifest", 200)
    return receipt
