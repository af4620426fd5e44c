"""What routes depend on: the running service, and a partner's bearer token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.errors import ApiError
from gateway.partner import tokens
from gateway.partner.tokens import digest
from gateway.service import GatewayService

_bearer = HTTPBearer(
    auto_error=False, description="A token from `room-gateway partner-token create`"
)


async def get_service(request: Request) -> GatewayService:
    """async on purpose: FastAPI runs a plain ``def`` dependency on its thread pool, a
    thread hop (and a GIL hand-over) on every request of every route for one attribute."""
    return request.app.state.service


Service = Annotated[GatewayService, Depends(get_service)]
# What any partner operation may answer, whatever it does.
PARTNER_CODES = ("missing_token", "invalid_token", "invalid_request", "store_busy")
# What any operation with a request body may answer besides.
BODY_CODES = ("malformed_request", "body_too_large")


async def require_partner(
    service: Service,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """401 unless the request carries a configured or created, unrevoked partner token.
    Returns who is asking: the token's digest (idempotency keys are kept per partner)."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(
            "missing_token", "missing bearer token (Authorization: Bearer ...)", headers=challenge
        )
    token = credentials.credentials
    if service.tokens.is_configured(token):
        return digest(token)
    if await service.db.run(service.tokens.is_stored, token, write=False):
        return digest(token)
    raise ApiError("invalid_token", "invalid or revoked bearer token", headers=challenge)


Principal = Annotated[str, Depends(require_partner)]


async def require_operator(
    service: Service,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """A partner token, or an admin token (clinic IT; `room-gateway room ...` makes a
    short-lived one on the gateway's host): who may ask a room's device how it is."""
    if credentials is not None and await service.db.run(
        tokens.is_stored, credentials.credentials, "admin", write=False
    ):
        return digest(credentials.credentials)
    return await require_partner(service, credentials)


Operator = Annotated[str, Depends(require_operator)]
