"""What the OpenAPI document says beyond the routes: the overview, tags, readable
operation ids (the route's function name), and the partner callback under ``webhooks``.

The document is checked into the repository (docs/openapi.json, written by
``room-gateway openapi``) and a test fails when the code drifts from it: partners
generate clients from it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from gateway.api.models import PartnerCallback

DESCRIPTION = """
Room audio for Blueprint: the partner API of the gateway.

1. `PUT /v1/clinicians/{external_id}` and `PUT /v1/clients/{external_id}`, by your own ids;
   the gateway creates them in Blueprint (once, however often you PUT) and sends changed
   details there.
2. `POST /v1/sessions` in a provisioned room (send an `Idempotency-Key`);
   `POST /v1/sessions/{id}/stop` at the end, or `/cancel` to discard the audio.
3. Poll `GET /v1/sessions/{id}` (state, timeline), list with `GET /v1/sessions`, or take
   the signed callback (see *Webhooks*), then `GET /v1/sessions/{id}/artifacts` for the
   progress note and transcript.

Authenticate with `Authorization: Bearer <token>` (`room-gateway partner-token create`).

**Errors** are RFC 9457 problem details (`application/problem+json`) with a stable
`code`; each operation lists the codes it can answer, per status. Switch on `code`, not
on `detail` (which is for people and may change).
"""

TAGS = [
    {
        "name": "clinicians and clients",
        "description": "The people sessions are for, by your ids; ensured in Blueprint.",
    },
    {"name": "sessions", "description": "Record in a room, follow, stop or cancel, read notes."},
    {"name": "rooms", "description": "Provisioned rooms and what their devices report."},
    {"name": "Blueprint webhooks", "description": "Called by Blueprint, not by partners."},
    {"name": "room devices", "description": "Called by the room devices, not by partners."},
    {"name": "health", "description": "For process managers, load balancers, Prometheus."},
    {"name": "testing", "description": "Only with testing.audio_endpoint = true."},
]


def operation_id(route: APIRoute) -> str:
    """The route's function name: ``start_session``, ``list_sessions``, ..."""
    return route.name


def describe(app: FastAPI) -> None:
    @app.webhooks.post(
        "partner-callback",
        operation_id="partner_callback",
        summary="Notes ready, note updated, or session failed",
        tags=["sessions"],
        status_code=200,
        responses={
            "default": {
                "description": "anything but 2xx is retried with backoff; 410 Gone stops it"
            }
        },
    )
    def partner_callback(body: PartnerCallback) -> None:
        """POSTed to ``partner.callback_url`` for each event of a session."""


def document() -> dict[str, Any]:
    """The document as shipped: default settings (no test-only routes), whatever the
    environment of the process asking."""
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    settings = GatewaySettings.model_construct(state_dir=Path(tempfile.gettempdir()))
    return create_app(settings).openapi()


def render(spec: dict[str, Any]) -> str:
    """The document as it is checked in: stable key order, one trailing newline."""
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
