"""The room devices' HTTPS audio path (protocol/ingest.py): sealed chunks, then manifests.

Separate from the partner API: a device authenticates with its own ingest token (never a
partner token) and may only use paths naming itself. Answers follow the protocol's table;
every refusal is a 4xx with a reason (ids and codes only), logged the same way.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.deps import Service
from gateway.api.errors import ApiError, problems
from gateway.devices import enrollment
from gateway.devices.registry import Device
from gateway.ingest.errors import IngestError, Unavailable
from protocol.enrollment import (
    ENROLL_PATH,
    EnrollAnswer,
    EnrollmentError,
    EnrollRequest,
    public_key_from,
    wrap,
)
from protocol.ids import ID_DESCRIPTION, ID_PATTERN
from protocol.ingest import (
    CHUNK_PATH,
    CLOSE_PATH,
    SEALED_CHUNK_CONTENT_TYPE,
    SEALING_KEY_PATH,
    ChunkReceipt,
    CloseReceipt,
    SealingKeyInfo,
)
from protocol.manifest import SessionManifest

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="The device's ingest token")
DeviceIdPath = Annotated[str, Path(pattern=ID_PATTERN, description=ID_DESCRIPTION)]
SessionIdPath = Annotated[str, Path(pattern=ID_PATTERN, description=ID_DESCRIPTION)]
# Only the canonical decimal form (no sign, no leading zero, no '_', ASCII digits): a seq
# has one spelling, so "+0", "0_0" or " 0" can never be taken for chunk 0.
SeqPath = Annotated[
    str,
    Path(
        pattern=r"^(0|[1-9][0-9]{0,6}|10000000)$",
        description="the chunk's seq: 0..10000000 in canonical decimal",
    ),
]

# What any ingest request may answer.
DEVICE_CODES = (
    "missing_token",
    "device_unauthenticated",
    "device_forbidden",
    "device_revoked",
    "foreign_session",
    "invalid_request",
    "malformed_request",
    "body_too_large",
    "store_busy",
)

router = APIRouter(tags=["room devices"])


def _refused(exc: IngestError, what: str) -> IngestError:
    """Log the refusal (ids and codes only); the error handler answers it."""
    logger.warning("ingest: %s refused (%d %s): %s", what, exc.status, exc.code, exc)
    return exc


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


@router.post(
    ENROLL_PATH,
    response_model=EnrollAnswer,
    responses=problems(
        "invalid_request",
        "malformed_request",
        "enrollment_refused",
        "too_many_attempts",
        "store_busy",
    ),
)
async def enroll(body: EnrollRequest, request: Request, service: Service) -> EnrollAnswer:
    """A device's files for a one-time enrollment code (protocol/enrollment.py): the code
    itself never comes here, only the lookup id derived from it; the answer is sealed
    with the code and wrapped to the key the device sent. Works once."""
    client = request.client.host if request.client is not None else "unknown"
    wait = service.enroll_guesses.retry_after(client)
    if wait is not None:
        logger.warning("enroll: %s refused: too many wrong codes", client)
        raise ApiError(
            "too_many_attempts",
            f"too many wrong codes; retry in {wait:.0f} s",
            headers={"Retry-After": str(round(wait))},
        )
    try:
        device_key = public_key_from(body.device_key)
    except EnrollmentError as exc:
        raise ApiError("invalid_request", str(exc)) from None
    try:
        room_id, sealed = await service.db.run(enrollment.redeem, body.lookup)
    except enrollment.EnrollmentRefused:
        service.enroll_guesses.wrong(client)
        logger.warning("enroll: unknown, used or expired code from %s", client)
        raise ApiError(
            "enrollment_refused", "no such code, or it was used or has expired"
        ) from None
    logger.info("enroll: device %s enrolled from %s", room_id, client)
    return EnrollAnswer(device_id=room_id, sealed=wrap(sealed, device_key))


@router.get(
    SEALING_KEY_PATH,
    response_model=SealingKeyInfo,
    responses=problems(*DEVICE_CODES, "no_sealing_key"),
)
async def sealing_key(device: AuthenticatedDevice, service: Service) -> SealingKeyInfo:
    """The key this gateway opens chunks with: a device compares it with the key it seals
    to before it records (at start and in `doctor`), so a wrong key is found before any
    audio is sealed to it. Only for a device's own token: which key a gateway uses is
    nobody else's business."""
    info = service.ingest.sealing_key_info
    if info is None:
        raise _refused(
            Unavailable(
                "the gateway has no sealing key yet (room-gateway keygen)", code="no_sealing_key"
            ),
            f"device {device.id} sealing key",
        )
    return info


@router.put(
    CHUNK_PATH,
    response_model=ChunkReceipt,
    responses=problems(
        *DEVICE_CODES,
        "unsupported_media_type",
        "chunk_conflict",
        "session_assembled",
        "chunk_rejected",
        "wrong_key",
        "path_mismatch",
        "undecodable_audio",
        "wrong_sample_rate",
        "duration_mismatch",
        "manifest_mismatch",
        "unclaimed_quota",
        "ingest_unavailable",
        "no_sealing_key",
    ),
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
        raise ApiError(
            "unsupported_media_type", f"Content-Type must be {SEALED_CHUNK_CONTENT_TYPE}"
        )
    with service.metrics.stages.waited("chunk.body"):
        blob = await request.body()
    try:
        with service.metrics.stages.waited("chunk.handler"):
            receipt = await service.ingest.receive_chunk(device.id, session_id, int(seq), blob)
    except IngestError as exc:
        service.metrics.ingested("chunk", exc.status)
        raise _refused(exc, f"device {device.id} session {session_id} chunk {seq}") from None
    service.metrics.ingested("chunk", 200, 0 if receipt.duplicate else len(blob))
    return receipt


@router.post(
    CLOSE_PATH,
    response_model=CloseReceipt,
    responses=problems(
        *DEVICE_CODES, "chunk_conflict", "path_mismatch", "manifest_mismatch", "unclaimed_quota"
    ),
)
async def close_device_session(
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
