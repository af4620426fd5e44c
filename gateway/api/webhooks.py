"""``POST /v1/webhooks/blueprint``: Blueprint's signed webhooks.

The signature is checked on the raw bytes before anything is parsed (401 if missing or
wrong); then the delivery is recorded once and its work queued, and we answer. Nothing
slow happens before the answer: the artifact is fetched by a job. Answers: 2xx for
anything accepted, duplicate or unknown (Blueprint must not retry it), 401 for a bad
signature, 400/422 for a signed body we cannot read, 413 past the size limit.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Header, Request
from pydantic import ValidationError

from gateway.api.deps import Service
from gateway.api.errors import ApiError, problems
from gateway.api.models import WebhookAck
from gateway.blueprint import signature
from gateway.blueprint.models import WebhookEvent
from gateway.sessions import webhooks

logger = logging.getLogger(__name__)

router = APIRouter(tags=["Blueprint webhooks"])


@router.post(
    "/v1/webhooks/blueprint",
    response_model=WebhookAck,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": WebhookEvent.model_json_schema(by_alias=True)}
            },
        }
    },
    responses=problems(
        "bad_signature",
        "not_a_webhook",
        "invalid_webhook_payload",
        "invalid_request",
        "malformed_request",
        "body_too_large",
        "store_busy",
    ),
)
async def receive_blueprint_webhook(
    request: Request,
    service: Service,
    x_blueprint_signature: Annotated[
        str | None,
        Header(
            alias=signature.HEADER,
            description="HMAC-SHA256 of the raw body keyed with the client secret, hex",
        ),
    ] = None,
) -> WebhookAck:
    """Configure this URL as the partner's callbackUrl at Blueprint."""
    started = time.perf_counter()
    body = await request.body()
    secret = service.settings.blueprint.client_secret.get_secret_value()
    if not signature.verify(body, x_blueprint_signature, secret):
        _count(service, None, "bad_signature", started)
        raise ApiError("bad_signature", f"missing or invalid {signature.HEADER}")
    try:
        event = WebhookEvent.model_validate_json(body)
    except ValidationError:
        _count(service, None, "unreadable", started)
        raise ApiError(
            "not_a_webhook", "body is not a webhook: JSON {eventType, payload}"
        ) from None
    digest = hashlib.sha256(body).hexdigest()
    try:
        recorded = await service.db.run(webhooks.record, service.lifecycle, digest, event)
    except webhooks.InvalidPayload as exc:
        _count(service, event.event_type, "invalid_payload", started)
        raise ApiError("invalid_webhook_payload", str(exc)) from None
    _count(service, event.event_type, recorded.outcome, started)
    logger.info(
        "webhook %s: %s (session %s)", event.event_type[:64], recorded.outcome, recorded.session_id
    )
    return WebhookAck(status=recorded.outcome)


def _count(service: Service, event_type: str | None, outcome: str, started: float) -> None:
    seconds = time.perf_counter() - started
    service.metrics.webhook(event_type, outcome, seconds)
    service.metrics.stages.record("session.webhook", 0.0, seconds)
